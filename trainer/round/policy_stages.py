"""The stages that change the policy: SFT, PPO (with its KL reference) and DPO.

Each takes the round's context, its job and the policy (trained in place), decides
whether it has the data to run (skipped with the reason otherwise) and returns a
:class:`~trainer.round.outcome.StageOutcome`. The training loops themselves are in
trainer/stages/.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

import torch

from trainer import artifacts, stages  # stages.X at call time: tests swap a stage
from trainer.config import derive_ppo_iterations, epochs_for
from trainer.policy_io import load_policy
from trainer.round.context import RoundContext, fmt, pick
from trainer.round.epochs import EpochCheckpoints
from trainer.round.outcome import RoundJob, StageOutcome
from trainer.stages.dpo import train_dpo


def sft(ctx: RoundContext, job: RoundJob, model: Any, epoch_states: EpochCheckpoints) -> StageOutcome:
    """Supervised fine-tuning on the snapshot's demonstrations (the new ones, by default)."""
    data, cfg = job.data, job.cfg.sft
    have = len(data.sft_train)
    if have < cfg.min_demonstrations:
        if have == 0 and data.demonstrations_already_trained:
            reason = (
                f"no new demonstrations: v{job.base.version} was already fine-tuned on all "
                f"{data.demonstrations_already_trained} in the snapshot (sft_demonstrations=new)"
            )
        elif have == 0:
            reason = "no demonstrations in the snapshot"
        else:
            reason = f"{have} new demonstration(s), fewer than sft_min_demonstrations={cfg.min_demonstrations}"
        return StageOutcome.skipped("sft", reason)
    epochs = epochs_for(have, cfg.batch_size, cfg.grad_accum, cfg.epochs, cfg.min_steps, cfg.max_epochs)
    total = math.ceil(have / cfg.batch_size) * epochs
    ctx.control.log(
        f"sft: {have} demonstrations ({len(data.sft_val)} validation), {epochs} epochs, {total} steps"
        + (
            f"; {data.demonstrations_already_trained} already trained on by this lineage left out"
            if data.demonstrations_already_trained else ""
        )
    )
    keep = cfg.select_by_reward and epochs > 1 and "rm" in job.stages
    metrics = stages.train_sft(
        model, ctx.tokenizer, data.sft_train, data.sft_val, cfg,
        accelerator=ctx.accelerator, on_step=ctx.on_step_for("sft", total),
        should_stop=ctx.control.should_stop, epoch_states=epoch_states if keep else None,
    )
    ctx.control.log("sft done: " + fmt(metrics, ("train_loss", "val_loss_before", "val_loss_after", "steps")))
    ctx.accelerator.free_memory()  # drop Accelerate's references to the optimizer state
    return StageOutcome.done("sft", metrics, model)


def ppo(ctx: RoundContext, job: RoundJob, model: Any, rm: Any) -> StageOutcome:
    """PPO against the reward model ``rm`` (None when there is no usable one: skipped)."""
    data, cfg = job.data, job.cfg.ppo
    if rm is None:
        why = ctx.gates.get("rm", {}).get("reason") or ctx.skipped.get("rm")
        return StageOutcome.skipped("ppo", f"no usable reward model ({why})" if why else "no reward model")
    if not data.train_prompts:
        return StageOutcome.skipped("ppo", "no train prompts in the snapshot")
    if cfg.ptx_coef > 0 and not data.sft_train:
        ctx.control.log("ppo_ptx_coef > 0 but there are no demonstrations; PPO-ptx off", "warning")
        cfg = replace(cfg, ptx_coef=0.0)
    prompts = pick(data.train_prompts, cfg.max_prompts, job.cfg.seed)
    iterations = derive_ppo_iterations(cfg, len(prompts), ctx.accelerator.num_processes)
    ref, ref_name = _kl_reference(ctx, job, model)
    ctx.control.log(
        f"ppo: {iterations} iterations of {cfg.rollout_batch_size} rollouts over {len(prompts)} prompts, "
        f"{cfg.max_new_tokens} new tokens at temperature {cfg.temperature:g}; KL reference {ref_name}"
    )
    value = copy.deepcopy(rm)
    reward_fn = stages.reward_fn_from_model(rm, ctx.tokenizer, max_length=job.cfg.rm.max_length)
    metrics = stages.train_ppo(
        model, ref, value, reward_fn, ctx.tokenizer, prompts, replace(cfg, iterations=iterations),
        ptx_examples=data.sft_train if cfg.ptx_coef > 0 else None, accelerator=ctx.accelerator,
        on_step=ctx.on_step_for("ppo", iterations), should_stop=ctx.control.should_stop,
    )
    del ref, value
    metrics["kl_reference"] = ref_name
    ctx.control.log("ppo done: " + fmt(metrics, ("score_first", "score", "kl", "entropy", "iterations")))
    ctx.accelerator.free_memory()
    return StageOutcome.done("ppo", metrics, model)


def _kl_reference(ctx: RoundContext, job: RoundJob, model: Any) -> tuple[Any, str]:
    """The frozen policy PPO's KL penalty pulls towards (``ppo_kl_reference``), and its name."""
    choice = job.cfg.ppo.kl_reference
    if choice == "start":
        return copy.deepcopy(model), "this round's starting (SFT) policy"
    pick_ref = job.lineage[-1]  # the root: v0 of this lineage
    if choice == "first_sft":
        trained = [p for p in reversed(job.lineage) if "sft" in p.stages]
        if trained:
            pick_ref = trained[0]
        elif "sft" in ctx.metrics:  # this round's SFT is the lineage's first
            return copy.deepcopy(model), "this round's SFT policy (the lineage's first)"
    ref, _ = load_policy(artifacts.resolve(ctx.artifacts_dir, pick_ref.artifact_path), device=ctx.device,
                         dtype=torch.float32)
    return ref, f"v{pick_ref.version} (ppo_kl_reference={choice})"


def dpo(ctx: RoundContext, job: RoundJob, model: Any) -> StageOutcome:
    """DPO on the snapshot's rankings, against a frozen copy of the starting policy."""
    data, cfg = job.data, job.cfg.dpo
    if len(data.rm_train) < job.cfg.rm.min_rankings:
        return StageOutcome.skipped(
            "dpo", f"{len(data.rm_train)} usable training ranking(s), fewer than rm_min_rankings="
            f"{job.cfg.rm.min_rankings}"
        )
    ref = copy.deepcopy(model)
    ctx.control.log(f"dpo: {len(data.rm_train)} rankings, {len(data.rm_val)} held out, beta {cfg.beta:g}")
    steps = math.ceil(len(data.rm_train) / cfg.rankings_per_batch) * cfg.max_epochs
    metrics = train_dpo(
        model, ref, ctx.tokenizer, data.rm_train, data.rm_val, cfg, accelerator=ctx.accelerator,
        on_step=ctx.on_step_for("dpo", steps), should_stop=ctx.control.should_stop,
    )
    del ref
    ctx.control.log("dpo done: " + fmt(metrics, ("train_loss", "val_accuracy", "val_margin", "steps")))
    ctx.accelerator.free_memory()
    return StageOutcome.done("dpo", metrics, model)

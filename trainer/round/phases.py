"""The round, phase by phase: :func:`run_round` and the list of phases it runs.

Each phase is a function of another module of this package; this one only orders them
(see trainer/round/__init__.py for what each does) and hands an exception to
:meth:`trainer.run_control.RunControl.settle`, which records how the run ended.
"""

from __future__ import annotations

from typing import Any

import torch

from app.config import Settings
from app.db import Database
from trainer.device import describe_device, free_memory, pick_device
from trainer.policy_io import load_policy
from trainer.round import policy_stages, register, reward_stage
from trainer.round.context import RoundContext
from trainer.round.epochs import EpochCheckpoints, select_sft_epoch
from trainer.round.evaluation import evaluate
from trainer.round.job import load_job
from trainer.round.outcome import RoundJob
from trainer.round.ranks import peer_failure, rank_tag, world_size
from trainer.run_control import RunControl
from trainer.run_endings import RoundResult
from trainer.stages.accel import make_accelerator


def run_round(database: Database, settings: Settings, control: RunControl) -> RoundResult:
    """Run the leased round to its end and record the outcome; never raises for a bad run
    (in a distributed round, a non-main rank's error or a collective failure is raised: the
    launched job then exits non-zero and the worker requeues the attempt)."""
    ctx = RoundContext(database, settings, control)
    try:
        try:
            return _run(ctx)
        finally:
            control.done = True
            free_memory()
    except BaseException as exc:
        if world_size() > 1 and (not control.writer or peer_failure(exc)):
            raise  # the launch child exits non-zero; the worker requeues the attempt
        return control.settle(exc, ctx.stage, ctx.summary_metrics)


def _run(ctx: RoundContext) -> RoundResult:
    """Read the job, load the starting policy, run the phases; always clean up after them."""
    try:
        job = load_job(ctx)
        model = _load_start_policy(ctx, job)
        epoch_states = EpochCheckpoints(ctx.artifacts_dir, ctx.run_id, rank_tag())
        try:
            return _phases(ctx, job, model, epoch_states)
        finally:
            epoch_states.close()
    finally:
        ctx.control.finish_tracking()


def _phases(ctx: RoundContext, job: RoundJob, model: Any, epoch_states: EpochCheckpoints) -> RoundResult:
    """SFT -> RM (+ gate) -> SFT epoch by reward -> PPO / DPO -> evaluate -> promote."""
    policy_changed = False
    if "sft" in job.stages:
        ctx.enter("sft")
        policy_changed |= ctx.record(policy_stages.sft(ctx, job, model, epoch_states)).ran
    if "rm" in job.stages:
        ctx.enter("rm")
        rm = ctx.record(reward_stage.train(ctx, job, model))
        if rm.ran:
            rm = register.register_reward_model(ctx, rm)
    else:
        rm = ctx.record(reward_stage.reuse_latest(ctx))
    ctx.rm_usable = rm.ran and reward_stage.gate(ctx, job)
    usable_rm = rm.artifact if ctx.rm_usable else None
    if len(epoch_states):
        model = select_sft_epoch(ctx, job, model, usable_rm, epoch_states)
    if "ppo" in job.stages:
        ctx.enter("ppo")
        policy_changed |= ctx.record(policy_stages.ppo(ctx, job, model, usable_rm)).ran
    if "dpo" in job.stages:
        ctx.enter("dpo")
        policy_changed |= ctx.record(policy_stages.dpo(ctx, job, model)).ran
    if not policy_changed:
        return register.finish_without_policy(ctx, job, rm.artifact_id)
    ctx.enter("evaluate")
    evaluation = evaluate(ctx, job, model, rm.artifact)
    ctx.control.check()
    ctx.enter("promote")
    return register.promote(ctx, job, model, evaluation, rm.artifact_id)


def _load_start_policy(ctx: RoundContext, job: RoundJob) -> Any:
    """Pick the device, make the Accelerator and load the base policy and its tokenizer."""
    ctx.device = pick_device()
    ctx.accelerator = make_accelerator(ctx.device.type)
    if ctx.accelerator.num_processes > 1:
        ctx.device = ctx.accelerator.device  # this rank's device (cuda:<local rank> on GPUs)
        ctx.control.log(
            f"distributed round: {ctx.accelerator.num_processes} processes "
            f"({ctx.accelerator.distributed_type}); this is the main process"
        )
    ctx.control.log(f"training on {describe_device(ctx.device)} from policy v{job.base.version} ({job.base_dir.name})")
    model, tokenizer = load_policy(job.base_dir, device=ctx.device, dtype=torch.float32)
    ctx.tokenizer = tokenizer
    return model

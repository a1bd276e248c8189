"""The reward-model stage: train one (fresh, or warm-started from the previous round's), or
reuse the latest registered one, and the RM gate that decides whether PPO may use it.

Registering a trained RM as ``reward_models/vN`` is in trainer/round/register.py.
"""

from __future__ import annotations

import math
from typing import Any

from app.services import policies
from trainer import artifacts, gates, stages  # stages.X at call time: tests swap a stage
from trainer.prompting import prompt_text
from trainer.round.context import RoundContext, fmt, pick
from trainer.round.outcome import RoundJob, StageOutcome
from trainer.stages.reward import evaluate_rankings
from trainer.stages.sampling import sample_responses


def train(ctx: RoundContext, job: RoundJob, model: Any) -> StageOutcome:
    """Train the round's reward model from the SFT policy ``model``, then set its bias so that
    demonstrations (else policy samples) score mean 0. Skipped without enough rankings."""
    data, cfg = job.data, job.cfg.rm
    usable = len(data.rm_train)
    if usable < cfg.min_rankings:
        if not data.rankings:
            total = len(data.rankings) + data.rankings_without_pairs
            reason = "no rankings in the snapshot" if total == 0 else (
                f"none of the {total} rankings implies a preference pair (all ties or flagged)"
            )
        else:
            reason = f"{usable} usable training ranking(s), fewer than rm_min_rankings={cfg.min_rankings}"
        return StageOutcome.skipped("rm", reason)
    rm, init = _initial_reward_model(ctx, job, model)
    steps_per_epoch = math.ceil(usable / cfg.rankings_per_batch)
    ctx.control.log(
        f"rm: {usable} training rankings, {len(data.rm_val)} held out ({data.rm_val_source}), "
        f"at most {cfg.epochs} epochs of {steps_per_epoch} steps (patience {cfg.patience}); start: {init}"
        + (f"; {data.rankings_without_pairs} without a pair left out" if data.rankings_without_pairs else "")
        + (f"; {data.evaluation_pairs} of the training rankings are evaluation judgments" if data.evaluation_pairs
           else "")
    )
    metrics = stages.train_reward_model(
        rm, ctx.tokenizer, data.rm_train, data.rm_val, cfg, keep_start_if_better=init.startswith("reward_models/"),
        accelerator=ctx.accelerator, on_step=ctx.on_step_for("rm", steps_per_epoch * cfg.epochs),
        should_stop=ctx.control.should_stop,
    )
    rm = ctx.accelerator.unwrap_model(rm)
    ctx.accelerator.free_memory()
    ctx.control.check()
    if data.demonstrations:
        chosen = pick(data.demonstrations, cfg.normalize_examples, job.cfg.seed)
        examples = [((d.prompt, d.messages), d.completion) for d in chosen]
        source = f"{len(examples)} demonstrations"
    else:
        examples = _policy_samples(ctx, job, model, data.train_prompts or data.eval_prompts)
        source = f"{len(examples)} policy samples"
    offset = stages.normalize_reward_bias(rm, ctx.tokenizer, examples, max_length=cfg.max_length)
    metrics = {**metrics, "bias_offset": offset, "init": init, "base": job.base.base}
    ctx.control.metric("rm", int(metrics.get("steps", 0)), {"bias_offset": offset})
    ctx.control.log(
        f"rm done: {fmt(metrics, ('val_accuracy', 'val_accuracy_before', 'train_accuracy', 'train_loss'))}, "
        f"best epoch {int(metrics['best_epoch'])} of {int(metrics['epochs_run'])}; "
        f"bias set so {source} score mean 0 (offset {offset:+.4f})"
    )
    return StageOutcome.done("rm", metrics, rm)


def _initial_reward_model(ctx: RoundContext, job: RoundJob, model: Any) -> tuple[Any, str]:
    """A fresh head on the SFT model, or the previous round's RM when ``rm_init`` says so
    (``auto``: when it beats the fresh one on this round's held-out rankings)."""
    fresh = stages.RewardModel.from_causal_lm(model, copy=True).to(ctx.device)
    cfg = job.cfg.rm
    if cfg.init == "scratch":
        return fresh, "scratch (rm_init=scratch)"
    previous = _load_registered(ctx, base=job.base.base)
    if previous is None:
        return fresh, "scratch (no earlier reward model of this base)"
    rm, version = previous.artifact, previous.metrics["reused_version"]
    if cfg.init == "previous" or not job.data.rm_val:
        del fresh
        return rm, f"reward_models/v{version} (rm_init={cfg.init})"
    acc_prev = evaluate_rankings(rm, ctx.tokenizer, job.data.rm_val, cfg, ctx.accelerator)["accuracy"]
    acc_fresh = evaluate_rankings(fresh, ctx.tokenizer, job.data.rm_val, cfg, ctx.accelerator)["accuracy"]
    ctx.control.metric("rm", 0, {"init_accuracy_previous": acc_prev, "init_accuracy_fresh": acc_fresh})
    if acc_prev > acc_fresh:
        del fresh
        return rm, f"reward_models/v{version}: held-out {acc_prev:.2f} against {acc_fresh:.2f} for a fresh head"
    del rm
    return fresh, f"scratch: the previous RM reward_models/v{version} scored {acc_prev:.2f} held out, a fresh head {acc_fresh:.2f}"


def reuse_latest(ctx: RoundContext) -> StageOutcome:
    """The latest registered RM, for rounds that do not train one (:meth:`StageOutcome.absent`
    when there is none, or it cannot be loaded)."""
    outcome = _load_registered(ctx)
    if outcome is None:
        return StageOutcome.absent("rm")
    ctx.control.log(f"using the latest reward model, reward_models/v{outcome.metrics['reused_version']}")
    return outcome


def _load_registered(ctx: RoundContext, base: str | None = None) -> StageOutcome | None:
    """Load the newest registered reward model (of base model ``base``, when given).

    ``None`` when there is none; also when it cannot be loaded, which is logged (a stale RM
    is not worth failing the round). The outcome's metrics are the registered RM's held-out
    figures (what the RM gate reads) and ``reused_version``.
    """
    with ctx.database.session() as db:
        if base is None:
            row = policies.latest_reward_model(db)
        else:
            row = next((r for r in policies.list_reward_models(db) if (r.metrics or {}).get("base") == base), None)
        if row is None:
            return None
        rel, version, rm_id, metrics = row.artifact_path, row.version, row.id, dict(row.metrics or {})
    try:
        rm = stages.RewardModel.load(artifacts.resolve(ctx.artifacts_dir, rel), device=ctx.device)
    except Exception as exc:  # noqa: BLE001 - a stale RM is not worth failing the round
        ctx.control.log(f"could not load reward_models/v{version}: {exc}"
                        + ("; training from scratch" if base is not None else ""), "warning")
        return None
    figures = {k: metrics[k] for k in ("val_accuracy", "val_pairs", "val_rankings") if k in metrics}
    outcome = StageOutcome.done("rm", {**figures, "reused_version": version}, rm)
    outcome.artifact_id = rm_id
    return outcome


def gate(ctx: RoundContext, job: RoundJob) -> bool:
    """The RM gate: is the reward model above chance on held-out rankings?"""
    rm_metrics = ctx.metrics.get("rm", {})
    pairs = int(rm_metrics.get("val_pairs") or 0)
    held = int(rm_metrics.get("val_rankings") or 0)
    result = gates.rm_gate(
        rm_metrics.get("val_accuracy"), pairs, job.cfg.rm,
        held_out_rankings=held or len(job.data.rm_val), total_rankings=len(job.data.rankings),
    )
    ctx.gates["rm"] = result.as_dict()
    ctx.control.log(
        f"rm gate {'passed' if result.passed else 'failed'}: " + (result.reason or (
            f"held-out accuracy {result.value:.2f} on {result.n} pairs, interval {result.low:.2f}-{result.high:.2f}"
        )),
        "info" if result.passed else "warning",
    )
    return result.passed


def _policy_samples(ctx: RoundContext, job: RoundJob, model: Any, prompts: list[Any]) -> list[Any]:
    """(prompt, response) pairs sampled from ``model``, to centre the RM's scores on when
    the snapshot has no demonstrations."""
    chosen = pick(prompts, job.cfg.rm.normalize_examples, job.cfg.seed)
    out = []
    for i in range(0, len(chosen), 16):
        chunk = chosen[i : i + 16]
        samples = sample_responses(
            model, ctx.tokenizer, [prompt_text(ctx.tokenizer, p) for p in chunk],
            max_new_tokens=job.cfg.ppo.max_new_tokens, temperature=job.cfg.ppo.temperature,
            generator_seed=job.cfg.seed + i,
        )
        out.extend(zip(chunk, samples.response_texts))
    return out

"""Evaluating the round's new policy on the validation prompts: against its parent (win
rate under the RM, score deltas, KL) and against policy v0 (KL, win rate), with the
per-prompt figures the deploy gate's intervals are computed from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trainer import artifacts, stages  # stages.X at call time: tests swap a stage
from trainer.policy_io import load_policy
from trainer.round.context import RoundContext, fmt
from trainer.round.outcome import RoundJob
from trainer.tracking import evaluation_rows


def evaluate(ctx: RoundContext, job: RoundJob, model: Any, rm: Any) -> dict[str, Any]:
    """The evaluation of ``model`` (KL only when there is no reward model ``rm``); ``{}``
    when the snapshot has no validation prompts."""
    prompts = job.data.eval_prompts[: job.cfg.eval.prompts]
    if not prompts:
        ctx.control.log("evaluation skipped: no prompts", "warning")
        return {}
    if rm is not None:
        score_fn = stages.reward_fn_from_model(rm, ctx.tokenizer, max_length=job.cfg.rm.max_length)
    else:
        ctx.control.log("no reward model: evaluation reports KL only", "warning")

        def score_fn(prompts: list[str], responses: list[str]) -> torch.Tensor:
            return torch.zeros(len(responses))

    prev, _ = load_policy(job.base_dir, device=ctx.device, dtype=torch.float32)
    result = stages.evaluate_policies(model, prev, score_fn, ctx.tokenizer, prompts, job.cfg.eval)
    del prev
    out: dict[str, Any] = {"kl_from_prev": result["kl_from_prev"], "eval_prompts": result["n"],
                           "eval_samples": result["samples"], "kls": result["kls"],
                           "context_cut_examples": result["context_cut_examples"],
                           "context_cut_messages": result["context_cut_messages"]}
    if rm is not None:
        out.update(
            win_rate=result["win_rate"], mean_score_new=result["mean_score_new"],
            mean_score_prev=result["mean_score_prev"], score_deltas=result["score_deltas"], wins=result["wins"],
        )
    ctx.control.check()
    out["kl_from_v0"] = out["kl_from_prev"]
    if job.base.version != 0:
        v0_dir = _v0_dir(ctx, job)
        if v0_dir is not None:
            v0, _ = load_policy(v0_dir, device=ctx.device, dtype=torch.float32)
            vs0 = stages.evaluate_policies(model, v0, score_fn, ctx.tokenizer, prompts, job.cfg.eval)
            del v0
            out["kl_from_v0"] = vs0["kl_from_prev"]
            if rm is not None:
                out["win_rate_vs_v0"] = vs0["win_rate"]
        else:
            del out["kl_from_v0"]
    summary = scalars(out)
    ctx.metrics["eval"] = summary
    ctx.control.metric("eval", 0, summary)
    if ctx.control.tracker is not None:
        ctx.control.tracker.table("eval/samples", evaluation_rows(out))
    ctx.control.log("evaluation: " + fmt(summary, ("win_rate", "mean_score_new", "mean_score_prev",
                                                  "kl_from_prev", "kl_from_v0")))
    return out


def scalars(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The evaluation without its per-prompt lists (what the run's and policy's metrics keep)."""
    return {k: v for k, v in evaluation.items() if not isinstance(v, list)}


def _v0_dir(ctx: RoundContext, job: RoundJob) -> Path | None:
    """Policy v0's directory, when it is registered and on disk."""
    if job.v0_path is None:
        return None
    path = artifacts.resolve(ctx.artifacts_dir, job.v0_path)
    return path if path.is_dir() else None

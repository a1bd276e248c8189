"""What a round leaves behind: published artifacts, registered rows, the run's final row.

* :func:`publish` writes an artifact into a staging directory and publishes it as
  ``<kind>/vN`` (trainer/artifacts.py numbers it and renames it atomically), for reward
  models and policies alike.
* :func:`register_reward_model` registers the round's RM as soon as it is trained.
* :func:`promote` publishes the new policy and, in the transaction that ends the run,
  registers it, opens its human evaluation (``evaluate_with_humans``) and deploys it when
  the deploy gate lets it (:func:`deploy_decision`).
* :func:`finish_without_policy` ends a round in which no policy stage ran.

A worker killed at any point leaves at most an unregistered ``vN`` directory, numbered
past on the next publish.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.models import User
from app.services import human_gate, policies, workers
from app.services.errors import Conflict
from trainer import artifacts, faults, gates
from trainer.policy_io import save_policy_atomic
from trainer.round.context import RoundContext, jsonable
from trainer.round.evaluation import scalars
from trainer.round.outcome import RoundJob, StageOutcome
from trainer.run_endings import CancelledLate, LeaseLost, RoundResult

logger = logging.getLogger(__name__)

#: The largest registered version of each kind of artifact (versions are numbered past it).
_REGISTERED_MAX: dict[str, Callable[[Session], int | None]] = {
    artifacts.POLICIES: policies.max_version,
    artifacts.REWARD_MODELS: policies.max_reward_model_version,
}


def publish(ctx: RoundContext, kind: str, write: Callable[[Path], None], pause_before: str | None = None) -> int:
    """``write(staging)`` a complete artifact, publish it as the next free ``<kind>/vN``; returns N.

    ``pause_before`` names the fault-injection point between writing and publishing
    (trainer/faults.py). The staging directory is gone afterwards, published or not.
    """
    staging = artifacts.staging_dir(ctx.artifacts_dir, kind, f"run{ctx.run_id}")
    write(staging)
    try:
        if pause_before:
            faults.pause_at(pause_before)
        with ctx.database.session() as db:
            registered = _REGISTERED_MAX[kind](db)
        return artifacts.publish(ctx.artifacts_dir, kind, staging, registered)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def register_reward_model(ctx: RoundContext, outcome: StageOutcome) -> StageOutcome:
    """Publish the trained RM as ``reward_models/vN`` and register it; the outcome gets its id
    (none on the non-main ranks of a distributed round, which write nothing)."""
    if not ctx.writer:
        return outcome
    rm = outcome.artifact
    version = publish(ctx, artifacts.REWARD_MODELS,
                      lambda staging: rm.save(staging, tokenizer=ctx.tokenizer, extra={"training_run_id": ctx.run_id}))
    faults.pause_at("rm-saved")
    with ctx.database.session() as db:
        ctx.control.owned_run(db)
        row = policies.register_reward_model(
            db, version=version, artifact_path=artifacts.reward_model_rel_path(version),
            training_run_id=ctx.run_id, metrics=jsonable(outcome.metrics),
        )
        outcome.artifact_id = row.id
    ctx.control.log(f"reward model saved as reward_models/v{version}")
    return outcome


def deploy_decision(ctx: RoundContext, job: RoundJob, evaluation: dict[str, Any]) -> tuple[bool, str]:
    """Whether to deploy, and the note for the summary (the deploy gate lives here)."""
    if not ctx.rm_usable:
        # An RM that failed its gate cannot judge the policy: only the KL budget applies.
        evaluation = {k: v for k, v in evaluation.items() if k not in ("score_deltas", "wins")}
    checks = gates.deploy_gates(evaluation, job.cfg.deploy)
    human = job.cfg.human_eval.enabled  # humans judge it instead of the RM; the KL budget still applies
    refused = gates.refusal([g for g in checks if g.name == "kl_from_parent"] if human else checks)
    ctx.gates["deploy"] = {
        "checks": [g.as_dict() for g in checks], "passed": not refused, "requested": job.deploy,
        "force": job.deploy_force, **({"judged_by": "humans"} if human else {}),
    }
    if job.deploy_force:
        return True, " (deploy: force" + (f", despite: {refused})" if refused else ")")
    if not job.deploy:
        return False, ("; the deploy gate would refuse it: " + refused) if refused else ""
    if refused:
        return False, f"; not deployed: {refused}"
    return not human, ""  # evaluate_with_humans: the verdict deploys it (app/services/human_gate.py)


def _human_deploy(job: RoundJob, gate_passed: bool) -> dict[str, Any]:
    """Whether the human verdict deploys the new policy, and why not otherwise."""
    if job.deploy_force:
        return {"deploy_on_verdict": False, "held_back": "deployed already (deploy: force)"}
    if not job.deploy:
        return {"deploy_on_verdict": False, "held_back": "the round did not ask to deploy"}
    if not gate_passed:
        return {"deploy_on_verdict": False, "held_back": "the KL budget refused it"}
    return {"deploy_on_verdict": True}


def promote(ctx: RoundContext, job: RoundJob, model: Any, evaluation: dict[str, Any], rm_id: int | None) -> RoundResult:
    """Publish the new policy as ``policies/vN`` and register it in the run's last transaction
    (deploying it, or opening its human evaluation, as the round asked and the gates allow)."""
    deploy, gate_note = deploy_decision(ctx, job, evaluation)
    ctx.control.check()
    if not ctx.writer:  # the main process saves and registers the (identical) weights
        return RoundResult("succeeded", None, "registered by the main process")
    version = publish(ctx, artifacts.POLICIES, lambda staging: save_policy_atomic(model, ctx.tokenizer, staging),
                      pause_before="promote")
    dest = artifacts.resolve(ctx.artifacts_dir, artifacts.policy_rel_path(version))
    trained = [s for s in job.stages if s not in ctx.skipped and s in ("sft", "ppo", "dpo")]
    summary = f"policy v{version} from v{job.base.version} ({' + '.join(trained)})"
    policy_metrics = {
        **scalars(evaluation), "stages": trained, "skipped": dict(ctx.skipped), "reward_model_id": rm_id,
        "gates": jsonable(ctx.gates),
        **{k: jsonable(ctx.metrics[k]) for k in ("sft", "rm", "ppo", "dpo") if k in ctx.metrics},
    }
    run_metrics = {**ctx.summary_metrics(), "policy_version": version, "reward_model_id": rm_id}
    ctx.control.flush()
    faults.pause_at("register")
    ctx.control.done = True
    try:
        with ctx.database.session() as db:
            run = ctx.control.owned_run(db)
            if run.cancel_requested:
                raise CancelledLate()
            policy = policies.register_policy(
                db, version=version, artifact_path=artifacts.policy_rel_path(version), parent_id=job.base.id,
                metrics=policy_metrics, base=job.base.base, training_run_id=ctx.run_id,
            )
            note = gate_note
            human_note = ""
            if job.cfg.human_eval.enabled:
                human, human_note = human_gate.open_for_round(
                    db, run, policy, job.base.id, **_human_deploy(job, ctx.gates["deploy"]["passed"])
                )
                run_metrics.setdefault("gates", {})["human"] = ctx.gates["human"] = human
            if deploy:
                actor = db.get(User, job.created_by_id) if job.created_by_id else None
                try:
                    policies.deploy_policy(db, actor, policy.id, reason=f"training run {ctx.run_id}")
                    note = "; deployed" + gate_note
                except Conflict as exc:
                    note = f"; not deployed: {exc.message}"
            elif job.deploy and not job.cfg.human_eval.enabled:
                note += f" (v{job.base.version} stays deployed; an admin can still deploy v{version} by hand)"
            summary += note + human_note
            run_metrics["summary"] = summary
            run_metrics["deployed"] = bool(deploy and note.startswith("; deployed"))
            workers.finish_run(db, ctx.lease, "succeeded", progress=1.0, policy_id=policy.id, metrics=run_metrics)
            workers.add_log(db, ctx.run_id, f"registered {summary}", "info" if not gate_note else "warning")
            policy_id = policy.id
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    logger.info("run %d: registered %s", ctx.run_id, summary)
    if ctx.control.tracker is not None:
        ctx.control.tracker.metrics({"round/policy_version": version, "round/deployed": float(
            run_metrics["deployed"])}, 0)
    return RoundResult("succeeded", policy_id, summary, run_metrics)


def finish_without_policy(ctx: RoundContext, job: RoundJob, rm_id: int | None) -> RoundResult:
    """End a round in which no policy stage ran (an RM-only round, or every stage skipped)."""
    ran = [s for s in job.stages if s not in ctx.skipped]
    why = "; ".join(f"{s}: {r}" for s, r in ctx.skipped.items())
    if ran:  # e.g. an RM-only round
        summary = f"{', '.join(ran)} done; no policy stage ran, so no new policy" + (f" ({why})" if why else "")
    else:
        summary = f"nothing to train, nothing registered: every stage was skipped ({why})"
    ctx.control.log(summary, "warning")
    metrics = {**ctx.summary_metrics(), "summary": summary}
    if rm_id is not None:
        metrics["reward_model_id"] = rm_id
    if not ctx.writer:
        return RoundResult("succeeded", None, summary, metrics)
    ctx.control.flush()
    ctx.control.done = True
    with ctx.database.session() as db:
        if not workers.finish_run(db, ctx.lease, "succeeded", progress=1.0, metrics=metrics):
            raise LeaseLost()
    return RoundResult("succeeded", None, summary, metrics)

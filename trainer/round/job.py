"""Reading the run: its config, base policy and data snapshot (and starting its trackers).

A first attempt fixes the snapshot (trainer/data.py) on the run row; a retry reuses it. In
a distributed round the main process reads first (taking the snapshot), then the other
ranks read the same row, so every rank trains on the same snapshot and config. Everything
the round later needs from the database about its inputs (the base's lineage, policy v0)
is read here, in the one session.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from sqlalchemy.orm import Session

from app.models import Policy, TrainingRun
from app.services import policies, workers
from trainer import artifacts
from trainer.config import round_defaults, stage_configs, with_sampling
from trainer.data import demonstrations_trained_by, load_round_data, round_sampling, take_snapshot
from trainer.round.context import RoundContext
from trainer.round.outcome import PolicyRef, RoundJob
from trainer.round.ranks import world_size
from trainer.run_endings import RoundError
from trainer.tracking import RoundTracker, tracking_dir


def load_job(ctx: RoundContext) -> RoundJob:
    """The round's job, read once per process (the main process first when distributed)."""
    return _read_job(ctx) if world_size() == 1 else _read_job_distributed(ctx)


def _read_job_distributed(ctx: RoundContext) -> RoundJob:
    job, error = None, ""
    if ctx.writer:
        try:
            job = _read_job(ctx)
        except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the others
            error, raised = f"{type(exc).__name__}: {exc}", exc
    told = [error]
    dist.broadcast_object_list(told, src=0)
    if error:
        if ctx.writer:
            raise raised
        raise RoundError(f"the main process could not start the round: {told[0]}")
    return job if job is not None else _read_job(ctx)


def _read_job(ctx: RoundContext) -> RoundJob:
    with ctx.database.session() as db:
        run = db.get(TrainingRun, ctx.run_id)
        assert run is not None
        cfg = stage_configs(run.config or {})
        stages = list(run.stages or [])
        base = _base_policy(ctx, db, run)
        snapshot = run.snapshot if (run.snapshot or {}).get("ids") else None
        reused = snapshot is not None
        if snapshot is None:
            snapshot = take_snapshot(db, list(run.prompt_set_ids), run.started_at or run.created_at,
                                     include_judgments=cfg.rm.include_evaluations)
            workers.update_run(db, ctx.lease, snapshot=snapshot)
        sampling = round_sampling(db, list(run.prompt_set_ids))
        given_config = dict(run.config or {})
        already: set[int] = set()
        if "sft" in stages and cfg.sft.demonstrations == "new":
            already = demonstrations_trained_by(db, db.get(Policy, base.id))
        data = load_round_data(
            db, snapshot, exclude_demonstrations=already,
            rm_holdout_fraction=cfg.rm.holdout_fraction, rm_unacceptable=cfg.rm.unacceptable,
        )
        lineage = _lineage(db, base)
        v0 = policies.get_by_version(db, 0)
        db.expunge(base)
        job = RoundJob(
            cfg=cfg, stages=stages, deploy=bool(run.deploy), deploy_force=bool(run.deploy_force), base=base,
            base_dir=artifacts.resolve(ctx.artifacts_dir, base.artifact_path),
            data=data, sampling=sampling, created_by_id=run.created_by_id,
            lineage=lineage, v0_path=v0.artifact_path if v0 is not None else None,
        )
    # Rollouts and evaluation sample as the labelers' sampler does, unless configured.
    job.cfg.ppo = with_sampling(job.cfg.ppo, sampling)
    job.cfg.eval = with_sampling(job.cfg.eval, sampling)
    ctx.plan_stages(stages)
    _start_tracking(ctx, job, given_config, snapshot)
    ctx.enter("snapshot")
    counts = snapshot["counts"]
    ctx.control.log(
        f"{'reusing the snapshot of an earlier attempt' if reused else 'snapshot'}: "
        f"{counts['rankings']} rankings, {counts['demonstrations']} demonstrations, "
        + (f"{counts['judgments']} evaluation judgments (rm_include_evaluations), " if "judgments" in counts else "")
        + f"{counts['prompts_train']} train / {counts['prompts_validation']} validation prompts "
        f"(sha256 {snapshot['sha256'][:12]}); sampling as the set: temperature "
        f"{job.cfg.ppo.temperature:g}, {job.cfg.ppo.max_new_tokens} new tokens"
    )
    ctx.control.check()
    return job


def _base_policy(ctx: RoundContext, db: Session, run: TrainingRun) -> Policy:
    """The policy the round starts from: the one it names, else the deployed one (which must be ready)."""
    if run.base_policy_id is not None:
        base = db.get(Policy, run.base_policy_id)
        if base is None:
            raise RoundError(f"the round's base policy {run.base_policy_id} no longer exists")
        return base
    base = policies.deployed_policy(db)
    if base is None:
        raise RoundError("no deployed policy to train from; run `rlhf policy bootstrap` first")
    if base.status != "ready":
        raise RoundError(f"the deployed policy v{base.version} is {base.status}: {base.error or ''}".rstrip(": "))
    workers.update_run(db, ctx.lease, base_policy_id=base.id)
    return base


def _lineage(db: Session, policy: Policy) -> list[PolicyRef]:
    """``policy`` and its ancestors, newest first (the last one is the lineage's root)."""
    out: list[PolicyRef] = []
    seen: set[int] = set()
    current: Policy | None = db.get(Policy, policy.id)
    while current is not None and current.id not in seen:
        seen.add(current.id)
        out.append(PolicyRef(current.id, current.version, current.artifact_path,
                             tuple((current.metrics or {}).get("stages") or ())))
        current = db.get(Policy, current.parent_id) if current.parent_id is not None else None
    return out


def _start_tracking(ctx: RoundContext, job: RoundJob, given: dict[str, Any], snapshot: dict[str, Any]) -> None:
    """Start the round's experiment trackers (config ``report_to``, else RLHF_REPORT_TO)."""
    names = job.cfg.tracking.report_to
    if names is None:
        try:
            names = ctx.settings.trackers
        except ValueError as exc:
            ctx.control.log(f"tracking: {exc}", "warning")
            names = []
    if not names or not ctx.writer:
        return
    directory = tracking_dir(ctx.artifacts_dir, ctx.run_id)
    tracker = RoundTracker(names, directory, ctx.run_id, warn=lambda m: ctx.control.log(m, "warning"))
    tracker.config({
        **round_defaults(), **given, "report_to": names, "run_id": ctx.run_id, "attempt": ctx.lease.attempt,
        "stages": ",".join(job.stages), "base_policy_version": job.base.version,
        "snapshot_sha256": snapshot.get("sha256", ""), "deploy": "force" if job.deploy_force else job.deploy,
    })
    if tracker.names:
        ctx.control.log(f"tracking: reporting to {', '.join(tracker.names)} under {directory}")
        ctx.control.tracker = tracker

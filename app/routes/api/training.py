"""Training rounds (queue, inspect, cancel) and live worker status; admin only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.config import Settings
from app.deps import DB, ApiAdmin, get_settings_dep
from app.models import TrainingRun
from app.models.base import utcnow
from app.schemas.training import (
    ConfigKeyOut,
    MetricSeries,
    RoundCreate,
    RoundCreated,
    RunLogOut,
    RunOut,
    WorkerOut,
)
from app.services import training, workers

router = APIRouter(tags=["training"])


def run_out(run: TrainingRun) -> RunOut:
    return RunOut(
        id=run.id,
        kind=run.kind,
        status=run.status,
        stage=run.stage,
        progress=run.progress,
        metrics=run.metrics or {},
        gates=(run.metrics or {}).get("gates") or {},
        policy_id=run.policy_id,
        error=run.error,
        prompt_set_ids=run.prompt_set_ids or [],
        stages=run.stages or [],
        deploy=training.deploy_mode(run),
        config=run.config or {},
        snapshot=training.snapshot_summary(run),
        attempts=run.attempts,
        cancel_requested=run.cancel_requested,
        worker_id=run.worker_id,
        base_policy_id=run.base_policy_id,
        created_by_id=run.created_by_id,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        heartbeat_at=run.heartbeat_at,
    )


@router.post("/training/rounds", response_model=RoundCreated, status_code=202)
def create_round(body: RoundCreate, db: DB, admin: ApiAdmin) -> RoundCreated:
    """Queue a round (SFT, RM, PPO, evaluate, register); a worker runs it."""
    run = training.create_round(
        db, admin.user, body.prompt_set_ids, stages=body.stages, deploy=body.deploy, config=body.config
    )
    db.commit()
    return RoundCreated(run_id=run.id)


@router.get("/training/config", response_model=list[ConfigKeyOut])
def round_config(_: ApiAdmin) -> list[ConfigKeyOut]:
    """The keys a round's config may set, with defaults."""
    return [
        ConfigKeyOut(
            name=k.name,
            default=k.default,
            type=k.type_name,
            nullable=k.nullable,
            help=k.help,
            minimum=k.minimum,
            maximum=k.maximum,
            choices=list(k.choices) if k.choices else None,
        )
        for k in training.ROUND_CONFIG.values()
    ]


@router.get("/training/runs", response_model=list[RunOut])
def list_runs(db: DB, _: ApiAdmin, limit: int = Query(50, ge=1, le=1000)) -> list[RunOut]:
    return [run_out(r) for r in training.list_runs(db, limit)]


@router.get("/training/runs/{run_id}", response_model=RunOut)
def get_run(run_id: int, db: DB, _: ApiAdmin) -> RunOut:
    return run_out(training.get_run(db, run_id))


@router.get("/training/runs/{run_id}/metrics", response_model=MetricSeries)
def run_metrics(run_id: int, db: DB, _: ApiAdmin) -> MetricSeries:
    return MetricSeries(series=training.metric_series(db, run_id))


@router.get("/training/runs/{run_id}/logs", response_model=list[RunLogOut])
def run_logs(
    run_id: int,
    db: DB,
    _: ApiAdmin,
    limit: int = Query(200, ge=1, le=5000),
    after_id: int | None = Query(None, description="only lines after this log id (for polling)"),
) -> list[RunLogOut]:
    return [RunLogOut.model_validate(r) for r in training.run_logs(db, run_id, limit, after_id)]


@router.post("/training/runs/{run_id}/cancel", response_model=RunOut)
def cancel_run(run_id: int, db: DB, admin: ApiAdmin) -> RunOut:
    """Cancel: a queued run at once, a running one at its next training step."""
    run = training.cancel_run(db, admin.user, run_id)
    db.commit()
    return run_out(run)


@router.get("/workers", response_model=list[WorkerOut])
def list_workers(db: DB, _: ApiAdmin, settings: Annotated[Settings, Depends(get_settings_dep)]) -> list[WorkerOut]:
    """Trainer workers, most recently seen first; ``alive`` means a heartbeat within the timeout."""
    now = utcnow()
    return [
        WorkerOut(
            id=w.id,
            hostname=w.hostname,
            status=w.status,
            alive=workers.is_alive(w, settings.heartbeat_timeout_s, now),
            device=w.device,
            policy_id=w.policy_id,
            run_id=w.run_id,
            started_at=w.started_at,
            last_seen_at=w.last_seen_at,
        )
        for w in workers.list_workers(db)
    ]

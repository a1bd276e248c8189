"""The training job queue and the worker registry, as plain database operations.

A training run moves ``queued -> running -> succeeded | failed | cancelled``. Workers claim
queued runs (PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED``; SQLite: a conditional
``UPDATE ... WHERE status = 'queued'`` in one short write transaction), then heartbeat
them every ``heartbeat_s``. A run whose heartbeat is older than ``heartbeat_timeout_s``
is reaped by whichever worker notices first: requeued while ``attempts <=
run_max_retries``, else failed with "worker lost: no heartbeat for N s".

A claim is a lease identified by ``(run id, worker id, attempt)``. Every write a worker
makes to its run is conditional on still holding that lease, so a worker that was
presumed dead (and whose run was requeued and claimed by another) cannot overwrite the
new owner's progress or register a policy for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import is_postgres
from app.models import RunLog, RunMetric, TrainingRun, Worker
from app.models.base import utcnow
from app.services import webhook_events


@dataclass(frozen=True)
class Lease:
    """A worker's claim on a run: valid while the row still says running/worker/attempt."""

    run_id: int
    worker_id: str
    attempt: int


@dataclass(frozen=True)
class LeaseState:
    owned: bool
    cancel_requested: bool


def _owned(lease: Lease):  # type: ignore[no-untyped-def]
    return (
        (TrainingRun.id == lease.run_id)
        & (TrainingRun.worker_id == lease.worker_id)
        & (TrainingRun.attempts == lease.attempt)
        & (TrainingRun.status == "running")
    )


# ------------------------------------------------------------------------- workers


def register_worker(db: Session, worker_id: str, hostname: str, device: str | None, status: str = "idle") -> Worker:
    worker = db.get(Worker, worker_id)
    now = utcnow()
    if worker is None:
        worker = Worker(id=worker_id, hostname=hostname, started_at=now)
        db.add(worker)
    worker.status = status
    worker.device = device
    worker.last_seen_at = now
    db.flush()
    return worker


def touch_worker(
    db: Session,
    worker_id: str,
    *,
    status: str | None = None,
    policy_id: int | None = None,
    run_id: int | None = None,
) -> None:
    """Record that the worker is alive, and what it is doing."""
    values: dict[str, Any] = {"last_seen_at": utcnow(), "policy_id": policy_id, "run_id": run_id}
    if status is not None:
        values["status"] = status[:64]
    db.execute(update(Worker).where(Worker.id == worker_id).values(**values))


def list_workers(db: Session) -> list[Worker]:
    return list(db.scalars(select(Worker).order_by(Worker.last_seen_at.desc())))


def is_alive(worker: Worker, timeout_s: float, now: datetime | None = None) -> bool:
    if worker.status in ("stopped", "lost"):
        return False
    return (now or utcnow()) - worker.last_seen_at <= timedelta(seconds=timeout_s)


def mark_lost_workers(db: Session, timeout_s: float, now: datetime | None = None) -> int:
    """Mark workers silent for longer than the timeout as ``lost``."""
    cutoff = (now or utcnow()) - timedelta(seconds=timeout_s)
    result = db.execute(
        update(Worker)
        .where(Worker.last_seen_at < cutoff, Worker.status.not_in(("stopped", "lost")))
        .values(status="lost", run_id=None)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- runs


def claim_run(db: Session, worker_id: str) -> tuple[TrainingRun, Lease] | None:
    """Claim the oldest queued run for ``worker_id`` and commit; None when nothing is queued."""
    now = utcnow()
    values = dict(status="running", worker_id=worker_id, heartbeat_at=now, cancel_requested=False)
    if is_postgres(db):
        run = db.scalars(
            select(TrainingRun)
            .where(TrainingRun.status == "queued")
            .order_by(TrainingRun.created_at, TrainingRun.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if run is None:
            db.rollback()
            return None
        for key, value in values.items():
            setattr(run, key, value)
        run.attempts += 1
        run.started_at = run.started_at or now
        db.commit()
        return run, Lease(run.id, worker_id, run.attempts)
    for _ in range(10):  # SQLite: optimistic, one conditional UPDATE per try
        candidate = db.scalar(
            select(TrainingRun.id)
            .where(TrainingRun.status == "queued")
            .order_by(TrainingRun.created_at, TrainingRun.id)
            .limit(1)
        )
        if candidate is None:
            db.rollback()
            return None
        result = db.execute(
            update(TrainingRun)
            .where(TrainingRun.id == candidate, TrainingRun.status == "queued")
            .values(attempts=TrainingRun.attempts + 1, **values)
        )
        db.commit()
        if result.rowcount == 1:  # type: ignore[attr-defined]
            run = db.get(TrainingRun, candidate, populate_existing=True)
            assert run is not None
            if run.started_at is None:
                run.started_at = now
                db.commit()
            return run, Lease(run.id, worker_id, run.attempts)
    return None


def heartbeat_run(db: Session, lease: Lease) -> LeaseState:
    """Refresh the run's heartbeat; says whether the lease still holds and if cancel was asked."""
    result = db.execute(update(TrainingRun).where(_owned(lease)).values(heartbeat_at=utcnow()))
    owned = result.rowcount == 1  # type: ignore[attr-defined]
    cancel = bool(db.scalar(select(TrainingRun.cancel_requested).where(TrainingRun.id == lease.run_id)))
    return LeaseState(owned=owned, cancel_requested=cancel)


def lease_state(db: Session, lease: Lease) -> LeaseState:
    row = db.execute(
        select(TrainingRun.status, TrainingRun.worker_id, TrainingRun.attempts, TrainingRun.cancel_requested).where(
            TrainingRun.id == lease.run_id
        )
    ).first()
    if row is None:
        return LeaseState(False, False)
    owned = row.status == "running" and row.worker_id == lease.worker_id and row.attempts == lease.attempt
    return LeaseState(owned, bool(row.cancel_requested))


def update_run(db: Session, lease: Lease, **values: Any) -> bool:
    """Set columns of the leased run; False (nothing written) when the lease is gone."""
    result = db.execute(update(TrainingRun).where(_owned(lease)).values(**values))
    return result.rowcount == 1  # type: ignore[attr-defined]


def locked_run(db: Session, lease: Lease) -> TrainingRun | None:
    """The run row, locked on PostgreSQL, if the lease still holds (for the final write)."""
    query = select(TrainingRun).where(_owned(lease))
    if is_postgres(db):
        query = query.with_for_update()
    return db.scalars(query).first()


def finish_run(db: Session, lease: Lease, status: str, *, error: str | None = None, **values: Any) -> bool:
    """End the leased run as succeeded, failed or cancelled (and queue ``round.finished``)."""
    ended = update_run(db, lease, status=status, error=error, finished_at=utcnow(), **values)
    if ended:
        webhook_events.round_finished(db, lease.run_id)
    return ended


def release_run(db: Session, lease: Lease, reason: str) -> bool:
    """Give the run back to the queue (a worker shutting down); the attempt is not counted."""
    ok = update_run(
        db,
        lease,
        status="queued",
        worker_id=None,
        heartbeat_at=None,
        stage=None,
        progress=0.0,
        attempts=TrainingRun.attempts - 1,
    )
    if ok:
        add_log(db, lease.run_id, f"requeued: {reason}", "warning")
    return ok


def reap_stale_runs(
    db: Session, timeout_s: float, max_retries: int, now: datetime | None = None
) -> list[tuple[int, str]]:
    """Requeue or fail running runs whose heartbeat is older than ``timeout_s``.

    Returns ``(run_id, "requeued" | "failed")`` for each run reaped. Each change is a
    conditional update on the stale heartbeat it read, so concurrent reapers and a
    late heartbeat never both win.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=timeout_s)
    stale = db.execute(
        select(TrainingRun.id, TrainingRun.heartbeat_at, TrainingRun.attempts, TrainingRun.worker_id).where(
            TrainingRun.status == "running", TrainingRun.heartbeat_at < cutoff
        )
    ).all()
    reaped: list[tuple[int, str]] = []
    for run_id, heartbeat_at, attempts, worker_id in stale:
        silent = int((now - heartbeat_at).total_seconds())
        lost = f"worker lost: no heartbeat for {silent} s"
        match = (
            (TrainingRun.id == run_id)
            & (TrainingRun.status == "running")
            & (TrainingRun.heartbeat_at == heartbeat_at)
        )
        if attempts <= max_retries:
            values: dict[str, Any] = dict(status="queued", worker_id=None, heartbeat_at=None, stage=None, progress=0.0)
            action, message = "requeued", f"{lost} (worker {worker_id}); requeued, attempt {attempts} of {max_retries + 1}"
        else:
            values = dict(status="failed", error=lost, finished_at=now)
            action, message = "failed", f"{lost} (worker {worker_id}); failed after {attempts} attempt(s)"
        result = db.execute(update(TrainingRun).where(match).values(**values))
        if result.rowcount == 1:  # type: ignore[attr-defined]
            add_log(db, run_id, message, "error" if action == "failed" else "warning")
            if action == "failed":
                webhook_events.round_finished(db, run_id)
            reaped.append((run_id, action))
    return reaped


def add_log(db: Session, run_id: int, message: str, level: str = "info") -> None:
    db.add(RunLog(run_id=run_id, level=level, message=message[:10000]))
    db.flush()


def add_metrics(db: Session, run_id: int, points: list[tuple[str, int, str, float]]) -> None:
    """Insert metric points ``(stage, step, name, value)`` in one batch."""
    if points:
        db.execute(
            RunMetric.__table__.insert(),
            [
                {"run_id": run_id, "stage": s, "step": int(st), "name": n[:64], "value": float(v), "created_at": utcnow()}
                for s, st, n, v in points
            ],
        )

"""A running round's link to the database: lease, cancel, progress, metrics, logs, its end.

:class:`RunControl` holds the lease (every write is conditional on it, and
:meth:`~RunControl.owned_run` is the ownership check before a registering transaction),
buffers metric points into ``run_metrics`` rows, writes log lines and progress, and
answers ``should_stop()`` from the flags the worker's heartbeat thread sets (cancel
requested, lease lost, worker shutting down). :meth:`~RunControl.settle` records how a
round that raised ended (the exceptions are listed in trainer/run_endings.py). The round
(trainer/round/) does the training; this module does the bookkeeping.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from app.db import Database
from app.models import TrainingRun
from app.services import workers
from app.services.workers import Lease
from trainer.run_endings import Cancelled, LeaseLost, RoundError, RoundResult

logger = logging.getLogger(__name__)

#: Stage names the stage functions report -> names in run_metrics / metric_series.
STAGE_NAMES = {"sft": "sft", "reward": "rm", "rm": "rm", "ppo": "ppo", "dpo": "dpo", "eval": "eval"}


__all__ = ["STAGE_NAMES", "LeaseLost", "RoundError", "RunControl"]


class RunControl:
    """The running round's side of the database: lease, cancel flag, progress, metrics, logs."""

    def __init__(
        self,
        database: Database,
        lease: Lease,
        *,
        stopping: threading.Event | None = None,
        flush_s: float = 1.0,
        writer: bool = True,
    ) -> None:
        self.database = database
        #: False on the non-main ranks of a distributed round: they keep the state, write nothing.
        self.writer = writer
        self.lease = lease
        self.stopping = stopping or threading.Event()
        self.flush_s = flush_s
        self.cancel_requested = False
        self.lost = False
        self.done = False  # set just before the final write; heartbeats stop mattering then
        self.stage: str | None = None
        self.progress = 0.0
        self._points: list[tuple[str, int, str, float]] = []
        self._dirty = False
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        self.tracker: Any = None  # a trainer.tracking.RoundTracker when the round reports to trackers

    # -- lease ------------------------------------------------------------------------

    def beat(self) -> None:
        """Refresh the heartbeat (called by the worker's heartbeat thread)."""
        if self.done:
            return
        with self.database.session() as db:
            state = workers.heartbeat_run(db, self.lease)
        if not state.owned and not self.done:
            if not self.lost:
                logger.error("run %d: lease lost (reaped or reassigned); stopping", self.lease.run_id)
            self.lost = True
        if state.cancel_requested and not self.cancel_requested:
            logger.info("run %d: cancel requested", self.lease.run_id)
            self.cancel_requested = True

    def should_stop(self) -> bool:
        return self.cancel_requested or self.lost or self.stopping.is_set()

    def check(self) -> None:
        """Raise ``Cancelled`` between steps when the run must stop."""
        if self.should_stop():
            raise Cancelled("run stopped")

    def owned_run(self, db: Session) -> TrainingRun:
        """The run row, locked, for a transaction that registers what the round made;
        :class:`LeaseLost` when this worker no longer owns it."""
        run = workers.locked_run(db, self.lease)
        if run is None:
            raise LeaseLost()
        return run

    # -- reporting --------------------------------------------------------------------

    def log(self, message: str, level: str = "info") -> None:
        logger.log(logging.getLevelName(level.upper()), "run %d: %s", self.lease.run_id, message)
        if not self.writer:
            return
        try:
            with self.database.session() as db:
                if workers.lease_state(db, self.lease).owned:
                    workers.add_log(db, self.lease.run_id, message, level)
        except Exception:  # noqa: BLE001 - a log line is never worth failing the run
            logger.exception("run %d: could not write a log line", self.lease.run_id)

    def set_stage(self, stage: str, progress: float) -> None:
        with self._lock:
            self.stage, self.progress, self._dirty = stage, progress, True
        self.flush()

    def set_progress(self, progress: float) -> None:
        with self._lock:
            if progress > self.progress:
                self.progress, self._dirty = min(progress, 1.0), True
        self.maybe_flush()

    def metric(self, stage: str, step: int, values: dict[str, float]) -> None:
        """Buffer a step's metric points for ``run_metrics`` (and hand them to the trackers)."""
        if not self.writer:
            return
        name = STAGE_NAMES.get(stage, stage)
        tracked: dict[str, float] = {}
        with self._lock:
            for key, value in values.items():
                if value is None or (isinstance(value, float) and not math.isfinite(value)):
                    continue
                self._points.append((name, int(step), key, float(value)))
                tracked[f"{name}/{key}"] = float(value)
        if self.tracker is not None and tracked:
            self.tracker.metrics(tracked, int(step))
        self.maybe_flush()

    def maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Write buffered metric points, progress and stage (one transaction)."""
        if not self.writer:
            return
        with self._lock:
            points, self._points = self._points, []
            dirty, self._dirty = self._dirty, False
            stage, progress = self.stage, self.progress
        self._last_flush = time.monotonic()
        if not points and not dirty:
            return
        try:
            with self.database.session() as db:
                if not workers.update_run(db, self.lease, stage=stage, progress=round(progress, 4)):
                    self.lost = True
                    db.rollback()
                    return
                workers.add_metrics(db, self.lease.run_id, points)
        except Exception:  # noqa: BLE001 - keep the points for the next flush
            logger.exception("run %d: could not write metrics; will retry", self.lease.run_id)
            with self._lock:
                self._points = points + self._points
                self._dirty = True

    def finish_tracking(self) -> None:
        """End the round's experiment trackers, if it reported to any."""
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None

    # -- the end ----------------------------------------------------------------------

    def settle(self, exc: BaseException, stage: str, metrics: Callable[[], dict[str, Any]]) -> RoundResult:
        """Record how a round that raised ``exc`` during ``stage`` ended: cancelled, requeued,
        lost or failed (see trainer/run_endings.py); ``metrics()`` gives what the round had
        measured so far, kept on the run row."""
        run_id = self.lease.run_id
        if isinstance(exc, Cancelled):  # CancelledLate included
            if self.lost:
                return self._lost()
            if self.stopping.is_set() and not self.cancel_requested:
                with self.database.session() as db:
                    workers.release_run(db, self.lease, "the worker was stopped")
                return RoundResult("requeued", summary="worker stopped; requeued")
            summary = f"cancelled during {stage}"
            self.flush()
            with self.database.session() as db:
                workers.finish_run(db, self.lease, "cancelled", metrics={**metrics(), "summary": summary})
                workers.add_log(db, run_id, summary, "warning")
            return RoundResult("cancelled", summary=summary)
        if isinstance(exc, LeaseLost):
            return self._lost()
        if not isinstance(exc, Exception):
            raise exc  # KeyboardInterrupt, SystemExit: not a way a run ends
        if self.lost:
            return self._lost()
        error = str(exc) if isinstance(exc, RoundError) else f"{stage}: {type(exc).__name__}: {exc}"
        logger.error("run %d failed", run_id, exc_info=exc)
        try:
            self.flush()
            with self.database.session() as db:
                workers.add_log(db, run_id, "".join(traceback.format_exception(exc))[-8000:], "error")
                workers.finish_run(db, self.lease, "failed", error=error[:4000], metrics=metrics())
        except Exception:  # noqa: BLE001
            logger.exception("run %d: could not record the failure", run_id)
        return RoundResult("failed", summary=error)

    def _lost(self) -> RoundResult:
        logger.error("run %d: abandoned (another worker owns it now, or it was reaped)", self.lease.run_id)
        return RoundResult("lost", summary="lease lost")

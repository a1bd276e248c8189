"""A running round's link to the database: lease, cancel, progress, metrics, logs.

:class:`RunControl` holds the lease (every write is conditional on it), buffers metric
points into ``run_metrics`` rows, writes log lines and progress, and answers
``should_stop()`` from the flags the worker's heartbeat thread sets (cancel requested,
lease lost, worker shutting down). The round (trainer/round.py) does the training; this
module does the bookkeeping.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from app.db import Database
from app.services import workers
from app.services.workers import Lease

logger = logging.getLogger(__name__)

#: Stage names the stage functions report -> names in run_metrics / metric_series.
STAGE_NAMES = {"sft": "sft", "reward": "rm", "rm": "rm", "ppo": "ppo", "dpo": "dpo", "eval": "eval"}


class LeaseLost(Exception):
    """The run was reaped (or reassigned) while this worker still worked on it."""


class RoundError(Exception):
    """A round cannot run (no deployed policy, ...); the run fails with this message."""


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
        from trainer.stages import Cancelled

        if self.should_stop():
            raise Cancelled("run stopped")

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

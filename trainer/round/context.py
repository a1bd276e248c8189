"""The state of one round while it runs (models live only here, never in the database).

:class:`RoundContext` is what every phase gets: the database and settings, the run's
:class:`~trainer.run_control.RunControl`, the device, the Accelerator and the tokenizer
once the starting policy is loaded, and the round's own record of what happened (metrics
per stage, skip reasons, gates), which becomes the run's metrics.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from app.config import Settings
from app.db import Database
from app.services import training
from trainer import faults
from trainer.round.outcome import StageOutcome, StagePlan
from trainer.run_control import RunControl
from trainer.stages.callbacks import StepCallback


class RoundContext:
    """One round's shared state: where it writes, what it has, what it has done so far."""

    def __init__(self, database: Database, settings: Settings, control: RunControl) -> None:
        self.database = database
        self.settings = settings
        self.control = control
        self.lease = control.lease
        self.run_id = control.lease.run_id
        #: Only the main process of a distributed round writes (files, rows); one process always does.
        self.writer = control.writer
        self.metrics: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        self.gates: dict[str, Any] = {}
        self.rm_usable = False
        self.plan: dict[str, StagePlan] = {}
        self.stage = "snapshot"
        # Set when the starting policy is loaded (trainer/round/phases.py).
        self.device: Any = None
        self.accelerator: Any = None
        self.tokenizer: Any = None

    @property
    def artifacts_dir(self) -> Path:
        return self.settings.resolved_artifacts_dir

    def plan_stages(self, stages: list[str]) -> None:
        """Share the progress bar out between ``stages`` (app/services/training.progress_plan)."""
        self.plan = {part: StagePlan(start, span) for part, (start, span) in training.progress_plan(stages).items()}

    def enter(self, stage: str) -> None:
        """Mark ``stage`` as the one running (the run row's stage, progress at its start)."""
        self.stage = stage
        self.control.set_stage(stage, self.plan[stage].start if stage in self.plan else self.control.progress)

    def on_step_for(self, stage: str, total_steps: int) -> StepCallback:
        """The step callback of ``stage``: metric points, and progress over its span of the bar."""
        plan = self.plan[stage]

        def on_step(reported_stage: str, step: int, values: dict[str, float]) -> None:
            faults.pause_at(stage)  # tests only (RLHF_FAULT_PAUSE_AT); no-op otherwise
            self.control.metric(reported_stage, step, values)
            self.control.set_progress(plan.start + plan.span * min(1.0, step / max(1, total_steps)))

        return on_step

    def record(self, outcome: StageOutcome) -> StageOutcome:
        """Keep a stage's metrics, or its skip reason (logged as a warning)."""
        if outcome.ran:
            self.metrics[outcome.stage] = outcome.metrics
        elif outcome.reason:
            self.skipped[outcome.stage] = outcome.reason
            self.control.log(f"{outcome.stage} skipped: {outcome.reason}", "warning")
        return outcome

    def summary_metrics(self) -> dict[str, Any]:
        """The run row's metrics: per-stage metrics, skip reasons and gates, as plain JSON."""
        out = jsonable(self.metrics)
        if self.skipped:
            out["skipped"] = dict(self.skipped)
        if self.gates:
            out["gates"] = jsonable(self.gates)
        return out


def pick(items: list[Any], limit: int, seed: int) -> list[Any]:
    """At most ``limit`` of ``items``: all of them, or a seeded random sample."""
    items = list(items)
    if len(items) <= limit:
        return items
    return random.Random(seed).sample(items, limit)


def fmt(metrics: dict[str, Any], keys: tuple[str, ...]) -> str:
    """``key=value, ...`` for the numeric ``keys`` of ``metrics`` (a log line's tail)."""
    parts = [f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), int | float)]
    return ", ".join(parts) or "ok"


def jsonable(value: Any) -> Any:
    """Plain JSON types (floats for tensors/numpy scalars; NaN/inf become None)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return None
    return int(number) if isinstance(value, int) else number

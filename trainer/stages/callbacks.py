"""How a stage talks to its caller: the step callback and cancellation.

A stage reports metrics through ``on_step(stage, step, metrics)`` (via
:class:`trainer.stages.metrics.StageMetrics`) and polls ``should_stop()`` with
:func:`check_cancel`, which raises :class:`Cancelled` (declared with the other ways a run
ends, in trainer/run_endings.py).
"""

from __future__ import annotations

from collections.abc import Callable

from trainer.run_endings import Cancelled

__all__ = ["Cancelled", "StepCallback", "check_cancel"]

StepCallback = Callable[[str, int, dict[str, float]], None]
"""``on_step(stage, step, metrics)``: called with a stage name (``"sft"``, ``"reward"``,
``"ppo"``, ``"dpo"``), a 1-based optimizer step (0: before training) and a flat dict of
float metrics."""


def check_cancel(should_stop: Callable[[], bool] | None) -> None:
    """Raise :class:`Cancelled` when the caller asked the stage to stop."""
    if should_stop is not None and should_stop():
        raise Cancelled("training stage cancelled")

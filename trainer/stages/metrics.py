"""Where the stages' metrics go: the caller's ``on_step`` callback and the logger."""

from __future__ import annotations

import logging

from .callbacks import StepCallback

logger = logging.getLogger(__name__)


def emit(on_step: StepCallback | None, stage: str, step: int, metrics: dict[str, float]) -> None:
    """Send metrics to the callback (if any) and to the module logger."""
    clean = {k: float(v) for k, v in metrics.items()}
    logger.info("%s step %d: %s", stage, step, ", ".join(f"{k}={v:.4g}" for k, v in clean.items()))
    if on_step is not None:
        on_step(stage, step, clean)

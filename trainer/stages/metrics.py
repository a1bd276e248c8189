"""The one metrics path of the training stages, in the manner of TRL's ``_metrics`` / ``log()``.

A stage makes one :class:`StageMetrics` and feeds it as it trains: ``add`` a number (a
weighted mean) or ``add_ratio`` a count over a count, on the device, without a sync.
``log(step, **extra)`` turns what was added since the last log into means over all
processes (one collective), adds ``extra`` (the learning rate, the epoch: numbers that
are already global), sends them to the caller's ``on_step`` and to the logger, and starts
a new window. ``emit(step, numbers)`` sends numbers that are final already (a held-out
evaluation). Longer spans (an epoch) use a :class:`RunningMeans` of their own.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .callbacks import StepCallback

logger = logging.getLogger(__name__)

Number = float | int | torch.Tensor


def emit(on_step: StepCallback | None, stage: str, step: int, metrics: dict[str, float]) -> None:
    """Send metrics to the callback (if any) and to the module logger."""
    clean = {k: float(v) for k, v in metrics.items()}
    logger.info("%s step %d: %s", stage, step, ", ".join(f"{k}={v:.4g}" for k, v in clean.items()))
    if on_step is not None:
        on_step(stage, step, clean)


class RunningMeans:
    """Named means accumulated as float64 ``(total, count)`` pairs on one device.

    Every process must add the same names in the same order (the stages do: they run the
    same code), so that :meth:`means` can sum all names across processes in one reduce.
    A count is clamped to at least 1 when divided by.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = device
        self._totals: dict[str, torch.Tensor] = {}

    def _f64(self, value: Number) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.detach().to(device=self.device, dtype=torch.float64)
        return torch.tensor(float(value), dtype=torch.float64, device=self.device)

    def add_ratio(self, name: str, numerator: Number, denominator: Number) -> None:
        """Add to ``name`` = sum of numerators / sum of denominators (``correct / pairs``)."""
        pair = torch.stack([self._f64(numerator), self._f64(denominator)])
        if name in self._totals:
            self._totals[name] += pair
        else:
            self._totals[name] = pair

    def add(self, name: str, value: Number, weight: Number = 1.0) -> None:
        """Add ``value`` to the mean ``name``, weighted by ``weight`` (tokens, rankings)."""
        w = self._f64(weight)
        self.add_ratio(name, self._f64(value) * w, w)

    def means(self, accelerator: Any = None) -> dict[str, float]:
        """The means so far, summed over all processes when ``accelerator`` is given."""
        if not self._totals:
            return {}
        names = list(self._totals)
        stacked = torch.stack([self._totals[n] for n in names])
        if accelerator is not None:
            stacked = accelerator.reduce(stacked, reduction="sum")
        return {n: float(stacked[i, 0] / stacked[i, 1].clamp(min=1)) for i, n in enumerate(names)}

    def clear(self) -> None:
        self._totals.clear()


class StageMetrics(RunningMeans):
    """A stage's metrics window and its way out to ``on_step``; see the module docstring."""

    def __init__(self, stage: str, on_step: StepCallback | None, accelerator: Any = None) -> None:
        super().__init__(accelerator.device if accelerator is not None else None)
        self.stage = stage
        self.on_step = on_step
        self.accelerator = accelerator

    def window(self) -> RunningMeans:
        """A separate accumulator on the same device (an epoch's totals)."""
        return RunningMeans(self.device)

    def collect(self) -> dict[str, float]:
        """The window's means over all processes; the window starts again empty."""
        values = self.means(self.accelerator)
        self.clear()
        return values

    def log(self, step: int, **extra: float | None) -> dict[str, float]:
        """Emit the window's means plus ``extra`` (None values left out); returns what was sent."""
        values = self.collect()
        values.update({k: v for k, v in extra.items() if v is not None})
        self.emit(step, values)
        return values

    def log_optimizer_step(self, step: int, scheduler: Any, epoch: int, grad_norm: Any = None) -> dict[str, float]:
        """:meth:`log` at an optimizer step, with its learning rate, the epoch and the
        gradient norm before clipping (when it was clipped)."""
        return self.log(
            step,
            lr=scheduler.get_last_lr()[0],
            epoch=epoch,
            grad_norm=float(grad_norm) if grad_norm is not None else None,
        )

    def emit(self, step: int, values: dict[str, float]) -> None:
        """Send final numbers as they are."""
        emit(self.on_step, self.stage, step, values)

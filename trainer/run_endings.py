"""How a training run ends: the result a round returns and the exceptions that end it early.

A round that runs to its end returns ``RoundResult("succeeded", ...)``. Every other ending
is one of these exceptions, and :func:`trainer.run_control.settle` turns each into the
run's final row:

* :class:`Cancelled` - a stage or ``RunControl.check()`` saw ``should_stop()``: the run
  ends ``cancelled``; ``requeued`` instead when the worker is stopping (the attempt is not
  counted); ``lost`` when the lease was lost meanwhile.
* :class:`CancelledLate` (a ``Cancelled``) - the cancel came after training, before the
  policy was registered; it ends the run the same way.
* :class:`LeaseLost` - a conditional write found that another worker owns the run now, or
  that it was reaped: ``lost``, and nothing more is written.
* :class:`RoundError` - the round cannot run (no deployed policy, ...): ``failed``, with
  its message as the error.
* any other ``Exception`` - a bug or a bad input in a stage: ``failed``, with
  ``<stage>: <type>: <message>`` as the error and the traceback in the run's log.

This module imports nothing heavy (no torch, no database), so the training stages, the
worker and the web-free CLI can all raise and catch these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Cancelled", "CancelledLate", "LeaseLost", "RoundError", "RoundResult"]


class Cancelled(Exception):
    """Raised by a stage when ``should_stop()`` returned True (a cancelled run)."""


class CancelledLate(Cancelled):
    """The cancel arrived after training but before registration (ends the run as ``Cancelled``)."""


class LeaseLost(Exception):
    """The run was reaped (or reassigned) while this worker still worked on it."""


class RoundError(Exception):
    """A round cannot run (no deployed policy, ...); the run fails with this message."""


@dataclass
class RoundResult:
    """How a round ended, as the worker sees it."""

    status: str  # succeeded | failed | cancelled | requeued | lost
    policy_id: int | None = None
    summary: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

"""Fault injection for tests: stop a worker at a named point of a training round.

``RLHF_FAULT_PAUSE_AT=<point>[,<point>...]`` makes the worker log
``fault injection: paused at <point>`` and sleep when it gets there, so that a test can
SIGKILL it at a known moment (tests/test_worker_kill_stages.py). The heartbeat thread
keeps beating meanwhile, as it would while a real step runs. The variable is read once,
at import; when it is unset :func:`pause_at` returns at once. Never set it in production.

Points:

* ``sft``, ``rm``, ``ppo`` - the first optimizer step of that stage (mid-stage: the
  model and optimizer state exist only in memory).
* ``rm-saved`` - the reward model is complete in ``reward_models/vN``, not registered yet.
* ``promote`` - the new policy's files are written into its staging directory
  (``policies/.staging-run<id>-*``), which is not renamed into place yet.
* ``register`` - ``policies/vN`` is complete on disk; the transaction that registers it and
  marks the run succeeded has not run.
"""

from __future__ import annotations

import logging
import os
import time

logger = logging.getLogger(__name__)

POINTS = ("sft", "rm", "ppo", "rm-saved", "promote", "register")
_ARMED = frozenset(p.strip() for p in os.environ.get("RLHF_FAULT_PAUSE_AT", "").split(",") if p.strip())
PAUSE_S = 3600.0


#: ``RLHF_FAULT_KILL_AT=<point>@<rank>``: that rank of a distributed round SIGKILLs itself there.
_KILL = frozenset(p.strip() for p in os.environ.get("RLHF_FAULT_KILL_AT", "").split(",") if p.strip())


def pause_at(point: str) -> None:
    """Sleep at ``point`` when RLHF_FAULT_PAUSE_AT names it (else return at once); die
    there when RLHF_FAULT_KILL_AT names it with this process's ``RANK``."""
    if _KILL and f"{point}@{os.environ.get('RANK', '0')}" in _KILL:
        import signal

        logger.warning("fault injection: rank %s killed at %s", os.environ.get("RANK", "0"), point)
        os.kill(os.getpid(), signal.SIGKILL)
    if point in _ARMED:
        logger.warning("fault injection: paused at %s", point)
        time.sleep(PAUSE_S)

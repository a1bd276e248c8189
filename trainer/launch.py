"""Distributed rounds from the queue: the worker's side (``rlhf worker --launcher ...``).

With a launcher configured (``--launcher "accelerate launch --num_processes 2"`` or
``RLHF_TRAIN_LAUNCHER``), the worker still claims the run, beats its heartbeat, watches for
cancel, and requeues or fails it; the round itself runs as a child job::

    <launcher> -m trainer.launch_round --run-id N --worker-id W --attempt A

(``accelerate launch ...``, ``torchrun --nproc_per_node 2``, multi-node ``accelerate
launch --num_machines 2 --main_process_ip ...``: anything that starts ranks of a Python
module). Every rank reads the same run row, hence the same snapshot and config
(trainer/launch_round.py); only the main process writes progress, metrics, logs and
artifacts and registers, under the worker's lease, so fencing works as in one process.

How an attempt ends, seen from here:

* the child exits and the run row is finished (succeeded, failed, cancelled): that is
  the outcome;
* cancel requested, or this worker stopping: the child's process group is terminated;
  the run is cancelled, or requeued without counting the attempt (as in one process);
* a rank died (non-zero exit, the run still ours and running): the attempt failed; the
  run is requeued while ``attempts <= RLHF_RUN_MAX_RETRIES``, else failed, exactly as a
  reaped run. The main process registers in one transaction at the very end, so nothing
  half-written is ever registered.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Any

from app.config import Settings
from app.db import Database
from app.models import TrainingRun
from app.services import workers
from trainer.round import RoundResult
from trainer.run_control import RunControl

logger = logging.getLogger(__name__)

#: Exit code of the child's main process when it recorded a failed or cancelled outcome itself.
RECORDED_FAILURE = 3
#: Seconds a child may keep running after its run row was finished (tracker files, cleanup).
GRACE_S = 30.0


def launch_command(launcher: str, run_id: int, worker_id: str, attempt: int) -> list[str]:
    """The child job's command line: the launcher, then ``-m trainer.launch_round ...``."""
    parts = shlex.split(launcher)
    if not parts:
        raise ValueError("the launcher is empty")
    if parts[0] in ("python", "python3"):
        parts[0] = sys.executable
    return [*parts, "-m", "trainer.launch_round", "--run-id", str(run_id), "--worker-id", worker_id,
            "--attempt", str(attempt)]


def _stop(proc: subprocess.Popen, why: str, timeout_s: float = 30.0) -> None:
    """Terminate the child's whole process group (launcher and ranks), then kill it."""
    if proc.poll() is not None:
        return
    logger.info("stopping the launched round (%s)", why)
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_launched(database: Database, settings: Settings, control: RunControl, launcher: str) -> RoundResult:
    """Run the leased round through ``launcher`` and settle its outcome (never raises for a bad run)."""
    lease = control.lease
    command = launch_command(launcher, lease.run_id, lease.worker_id, lease.attempt)
    control.log(f"launching: {shlex.join(command)}")
    control.stage = "launched"
    env = {**os.environ, "RLHF_LAUNCHED": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, env=env, start_new_session=True)  # noqa: S603 - the admin's launcher
    finished_at: float | None = None
    reason = ""
    while proc.poll() is None:
        time.sleep(0.2)
        if control.cancel_requested and not reason:
            reason = "cancel"
        elif control.stopping.is_set() and not reason:
            reason = "stop"
        elif control.lost and finished_at is None:
            finished_at = time.monotonic()  # the child finished the row (or another worker owns it)
        if reason:
            _stop(proc, reason)
        elif finished_at is not None and time.monotonic() - finished_at > GRACE_S:
            _stop(proc, "the run row is finished but the ranks did not exit")
    code = proc.wait()
    control.done = True
    return _settle(database, settings, control, code, reason)


def _run_row(database: Database, run_id: int) -> tuple[str, int, Any, str]:
    with database.session() as db:
        run = db.get(TrainingRun, run_id)
        assert run is not None
        metrics = run.metrics or {}
        return run.status, run.attempts, run.policy_id, str(metrics.get("summary") or run.error or "")


def _settle(database: Database, settings: Settings, control: RunControl, code: int, reason: str) -> RoundResult:
    lease = control.lease
    with database.session() as db:
        owned = workers.lease_state(db, lease).owned
    if not owned:  # the child recorded the outcome (or the run was reaped meanwhile)
        status, _, policy_id, summary = _run_row(database, lease.run_id)
        if status in ("succeeded", "failed", "cancelled"):
            return RoundResult(status, policy_id, summary)
        return RoundResult("lost", summary="lease lost")
    if reason == "cancel":
        summary = "cancelled (the launched round was stopped)"
        with database.session() as db:
            workers.finish_run(db, lease, "cancelled", metrics={"summary": summary})
            workers.add_log(db, lease.run_id, summary, "warning")
        return RoundResult("cancelled", summary=summary)
    if reason == "stop":
        with database.session() as db:
            workers.release_run(db, lease, "the worker was stopped")
        return RoundResult("requeued", summary="worker stopped; requeued")
    return _rank_died(database, settings, lease, code)


def _rank_died(database: Database, settings: Settings, lease: workers.Lease, code: int) -> RoundResult:
    """A rank (or the launcher) exited without the main process finishing the run."""
    how = f"signal {-code}" if code < 0 else f"exit code {code}"
    lost = f"a training process died ({how}) before the round finished"
    with database.session() as db:
        run = workers.locked_run(db, lease)
        if run is None:
            return RoundResult("lost", summary="lease lost")
        attempts = run.attempts
        if attempts <= settings.run_max_retries:
            workers.update_run(db, lease, status="queued", worker_id=None, heartbeat_at=None, stage=None, progress=0.0)
            workers.add_log(db, lease.run_id, f"{lost}; requeued, attempt {attempts} of {settings.run_max_retries + 1}",
                            "error")
            status = "requeued"
        else:
            workers.finish_run(db, lease, "failed", error=lost)
            workers.add_log(db, lease.run_id, f"{lost}; failed after {attempts} attempt(s)", "error")
            status = "failed"
    logger.error("run %d: %s; %s", lease.run_id, lost, status)
    return RoundResult(status, summary=lost)

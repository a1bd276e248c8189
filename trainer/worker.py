"""The trainer worker process (``rlhf worker``): sampler + training-run claims + heartbeats.

Threads of one worker:

* **heartbeat** (daemon): every ``heartbeat_s`` updates the worker row (status, loaded
  policy, current run), refreshes the heartbeat of the run being trained (and picks up
  a cancel request or a lost lease), and reaps runs whose heartbeat is older than
  ``heartbeat_timeout_s`` (requeue up to ``run_max_retries``, else fail). Every worker
  reaps, so a run is recovered as long as any worker is alive.
* **sampler** (when sampling and training both run): the :class:`~trainer.sampler.Sampler`
  loop, polling every ``worker_poll_s`` when idle.
* **main**: claims queued training runs and runs them one at a time
  (:func:`trainer.round.run_round`), or, with a launcher (``--launcher``,
  ``RLHF_TRAIN_LAUNCHER``), as a distributed child job (:func:`trainer.launch.run_launched`);
  or runs the sampler loop when training is off.

A failing run is failed with its error and the worker goes on; a failing sampler pass is
logged and retried. SIGTERM/SIGINT stop the worker: a run in progress is requeued (the
attempt is not counted) and the worker row is marked ``stopped``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from typing import Any

from app.config import Settings
from app.db import Database
from app.services import workers
from trainer.round import RoundResult, RunControl, run_round
from trainer.sampler import Sampler

logger = logging.getLogger(__name__)


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class TrainerWorker:
    """One worker process. ``run_forever`` for the service, ``run_once`` for scripts and tests."""

    def __init__(
        self,
        settings: Settings,
        database: Database | None = None,
        *,
        sampler: bool = True,
        training: bool = True,
        worker_id: str | None = None,
        device: Any = None,
        sampler_obj: Sampler | None = None,
        launcher: str | None = None,
    ) -> None:
        self.settings = settings
        #: Run each claimed round as a child job through this launcher (trainer/launch.py); None: in-process.
        self.launcher = (launcher if launcher is not None else settings.train_launcher) or None
        if settings.torch_threads is not None:
            from trainer.device import set_torch_threads

            set_torch_threads(settings.torch_threads)
        self.database = database or Database(settings.resolved_database_url)
        self._owns_database = database is None
        self.do_sampling = sampler
        self.do_training = training
        self.worker_id = worker_id or make_worker_id()
        self.device = device
        self.stop_event = threading.Event()
        self.sampler: Sampler | None = None
        if sampler:
            self.sampler = sampler_obj or Sampler(self.database, settings, device=device)
        self.control: RunControl | None = None
        self.results: list[RoundResult] = []
        self._status = "starting"
        self._heartbeat_thread: threading.Thread | None = None
        self._registered = False

    # -- worker row and heartbeat -----------------------------------------------------

    def _device_label(self) -> str:
        try:
            import torch

            if torch.cuda.is_available():
                return f"cuda ({torch.cuda.get_device_name(0)})"[:64]
        except Exception:  # noqa: BLE001
            pass
        return "cpu"

    def register(self) -> None:
        if self._registered:
            return
        with self.database.session() as db:
            workers.register_worker(db, self.worker_id, socket.gethostname(), self._device_label(), "idle")
        self._registered = True
        roles = [r for r, on in (("sampler", self.do_sampling), ("training", self.do_training)) if on]
        logger.info("worker %s started (%s)", self.worker_id, " + ".join(roles) or "reaper only")

    def status_text(self) -> str:
        if self.control is not None:
            return f"training run {self.control.lease.run_id} ({self.control.stage or 'starting'})"
        return self._status

    def heartbeat_once(self) -> None:
        """One heartbeat: the worker row, the current run's lease, and reaping."""
        control = self.control
        if control is not None:
            try:
                control.beat()
            except Exception:  # noqa: BLE001
                logger.exception("heartbeat of run %d failed", control.lease.run_id)
        with self.database.session() as db:
            workers.touch_worker(
                db,
                self.worker_id,
                status=self.status_text(),
                policy_id=self.sampler.policy_id if self.sampler else None,
                run_id=control.lease.run_id if control is not None else None,
            )
        self.reap()

    def reap(self) -> None:
        with self.database.session() as db:
            reaped = workers.reap_stale_runs(db, self.settings.heartbeat_timeout_s, self.settings.run_max_retries)
            workers.mark_lost_workers(db, max(self.settings.heartbeat_timeout_s, 3 * self.settings.heartbeat_s))
        for run_id, action in reaped:
            logger.warning("run %d: worker lost (no heartbeat for %.0f s); %s", run_id, self.settings.heartbeat_timeout_s, action)

    def _heartbeat_loop(self) -> None:
        while not self.stop_event.wait(self.settings.heartbeat_s):
            try:
                self.heartbeat_once()
            except Exception:  # noqa: BLE001 - the database may be briefly unavailable
                logger.exception("heartbeat failed")

    def start_heartbeat(self) -> None:
        if self._heartbeat_thread is None:
            self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
            self._heartbeat_thread.start()

    # -- training ---------------------------------------------------------------------

    def train_once(self) -> RoundResult | None:
        """Claim one queued run and run it to its end; None when nothing is queued."""
        with self.database.session() as db:
            claimed = workers.claim_run(db, self.worker_id)
        if claimed is None:
            return None
        run, lease = claimed
        logger.info("run %d: claimed (attempt %d)", run.id, lease.attempt)
        control = RunControl(self.database, lease, stopping=self.stop_event)
        self.control = control
        try:
            control.log(f"started by worker {self.worker_id} (attempt {lease.attempt})")
            if self.launcher:
                from trainer.launch import run_launched

                result = run_launched(self.database, self.settings, control, self.launcher)
            else:
                result = run_round(self.database, self.settings, control)
        except Exception as exc:  # noqa: BLE001 - run_round records failures itself; belt and braces
            logger.exception("run %d: unexpected error", run.id)
            with self.database.session() as db:
                workers.finish_run(db, lease, "failed", error=f"{type(exc).__name__}: {exc}"[:4000])
            result = RoundResult("failed", summary=str(exc))
        finally:
            self.control = None
        logger.info("run %d: %s%s", run.id, result.status, f" - {result.summary}" if result.summary else "")
        self.results.append(result)
        return result

    # -- sampling ---------------------------------------------------------------------

    def sample_once(self) -> int:
        """One sampler step; errors are logged, never raised."""
        if self.sampler is None:
            return 0
        try:
            self._status = "sampling"
            return self.sampler.step()
        except Exception:  # noqa: BLE001
            logger.exception("sampler step failed; retrying later")
            return 0
        finally:
            self._status = "idle"

    def _sampler_loop(self) -> None:
        while not self.stop_event.is_set():
            if self.sample_once() == 0:
                self.stop_event.wait(self.settings.worker_poll_s)

    # -- entry points -----------------------------------------------------------------

    def run_once(self, max_sampler_batches: int = 1000) -> None:
        """Reap, run at most one queued training run, then fill the sampler buffers; return."""
        self.stop_event.clear()
        self.register()
        self.start_heartbeat()
        try:
            self.reap()
            if self.do_training:
                self.train_once()
            if self.sampler is not None:
                for _ in range(max_sampler_batches):
                    if self.stop_event.is_set() or self.sample_once() == 0:
                        break
        finally:
            self.shutdown()

    def run_forever(self) -> None:
        """Serve until SIGTERM/SIGINT (or :meth:`stop`)."""
        self.register()
        self._install_signal_handlers()
        self.start_heartbeat()
        sampler_thread = None
        try:
            if self.do_training and self.sampler is not None:
                sampler_thread = threading.Thread(target=self._sampler_loop, name="sampler", daemon=True)
                sampler_thread.start()
            if self.do_training:
                while not self.stop_event.is_set():
                    try:
                        result = self.train_once()
                    except Exception:  # noqa: BLE001 - e.g. the database is down
                        logger.exception("claiming a training run failed")
                        result = None
                    if result is None:
                        self.stop_event.wait(self.settings.worker_poll_s)
            elif self.sampler is not None:
                self._sampler_loop()
            else:
                self.stop_event.wait()
        finally:
            self.stop_event.set()
            if sampler_thread is not None:
                sampler_thread.join(timeout=60)
            self.shutdown()

    def stop(self) -> None:
        self.stop_event.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, _frame: Any) -> None:
            logger.info("worker %s: %s received, stopping", self.worker_id, signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def shutdown(self) -> None:
        self.stop_event.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=max(5.0, self.settings.heartbeat_s * 2))
            self._heartbeat_thread = None
        if self.sampler is not None:
            self.sampler.close()
        try:
            with self.database.session() as db:
                workers.touch_worker(db, self.worker_id, status="stopped")
        except Exception:  # noqa: BLE001
            logger.exception("could not mark worker %s stopped", self.worker_id)
        if self._owns_database:
            self.database.dispose()
        logger.info("worker %s stopped", self.worker_id)

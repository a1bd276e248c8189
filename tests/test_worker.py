"""The job queue and the worker process: claims, heartbeats, reaping, lease fencing,
a worker killed with SIGKILL in the middle of a run, and a bad run not killing the worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from app.models import Policy, TrainingRun, Worker
from app.models.base import utcnow
from app.services import training, workers
from tests.factories import make_prompt_set
from tests.round_helpers import TINY_CONFIG, bootstrap_v0, create_run, fast_settings, labeled_set, logs_of, run_state
from trainer.worker import TrainerWorker

pytestmark = pytest.mark.usefixtures("single_torch_thread")

ROOT = Path(__file__).resolve().parent.parent


def queued_run(database, name: str = "q") -> int:  # type: ignore[no-untyped-def]
    with database.session() as db:
        ps = make_prompt_set(db, name)
        return training.create_round(db, None, [ps.id]).id


def age_heartbeat(database, run_id: int, seconds: float) -> None:  # type: ignore[no-untyped-def]
    with database.session() as db:
        db.execute(
            update(TrainingRun).where(TrainingRun.id == run_id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )


def test_claims_take_the_oldest_queued_run_once(database) -> None:
    first, second = queued_run(database, "a"), queued_run(database, "b")
    with database.session() as db:
        run, lease = workers.claim_run(db, "w1")
        assert (run.id, run.status, run.worker_id, run.attempts) == (first, "running", "w1", 1)
        assert run.started_at is not None and run.heartbeat_at is not None
    with database.session() as db:
        run, lease2 = workers.claim_run(db, "w2")
        assert run.id == second
    with database.session() as db:
        assert workers.claim_run(db, "w3") is None
    with database.session() as db:
        assert workers.heartbeat_run(db, lease).owned
        training.cancel_run(db, None, first)
    with database.session() as db:
        state = workers.heartbeat_run(db, lease)
        assert state.owned and state.cancel_requested


def test_a_silent_run_is_requeued_then_failed_past_the_retry_limit(database) -> None:
    run_id = queued_run(database)
    with database.session() as db:
        _, lease1 = workers.claim_run(db, "w1")
    with database.session() as db:  # fresh heartbeat: nothing to reap
        assert workers.reap_stale_runs(db, timeout_s=10, max_retries=1) == []
    age_heartbeat(database, run_id, 30)
    with database.session() as db:
        assert workers.reap_stale_runs(db, timeout_s=10, max_retries=1) == [(run_id, "requeued")]
    run = run_state(database, run_id)
    assert (run.status, run.worker_id, run.attempts, run.error) == ("queued", None, 1, None)
    assert "worker lost: no heartbeat for 30 s" in logs_of(database, run_id)

    with database.session() as db:
        _, lease2 = workers.claim_run(db, "w2")
        assert lease2.attempt == 2
        # The first worker's lease is gone: its writes are refused.
        assert not workers.update_run(db, lease1, progress=0.9)
        assert not workers.heartbeat_run(db, lease1).owned
        assert workers.update_run(db, lease2, progress=0.1)
    age_heartbeat(database, run_id, 45)
    with database.session() as db:
        assert workers.reap_stale_runs(db, timeout_s=10, max_retries=1) == [(run_id, "failed")]
    run = run_state(database, run_id)
    assert run.status == "failed" and run.error == "worker lost: no heartbeat for 45 s"
    assert run.finished_at is not None


def test_a_bad_run_fails_with_its_error_and_the_worker_goes_on(settings, database, tiny_base) -> None:
    s = fast_settings(settings)
    bad = queued_run(database, "no-policy-yet")  # nothing is deployed: this run cannot start
    worker = TrainerWorker(s, database, sampler=False)
    worker.run_once()
    run = run_state(database, bad)
    assert run.status == "failed"
    assert run.error == "no deployed policy to train from; run `rlhf policy bootstrap` first"

    v0 = bootstrap_v0(s, database, tiny_base)
    good = create_run(database, [labeled_set(database, v0.id, rankings=0, demonstrations=2)], stages=["sft"])
    worker.run_once()
    assert run_state(database, good).status == "succeeded"
    assert [r.status for r in worker.results] == ["failed", "succeeded"]
    with database.session() as db:
        row = db.get(Worker, worker.worker_id)
        assert row is not None and row.status == "stopped" and row.device


def _worker_env(settings, db_url: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        **os.environ,
        "RLHF_DATABASE_URL": db_url,
        "RLHF_DATA_DIR": str(settings.data_dir),
        "RLHF_ARTIFACTS_DIR": str(settings.resolved_artifacts_dir),
        "RLHF_SECRET_KEY": "test",
        "RLHF_HEARTBEAT_S": "0.3",
        "RLHF_HEARTBEAT_TIMEOUT_S": "3",
        "RLHF_WORKER_POLL_S": "0.2",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def test_kill_9_mid_run_requeues_after_the_timeout_and_a_second_worker_completes_it(
    settings, database, db_url, tiny_base, tmp_path
) -> None:
    s = fast_settings(settings, heartbeat_timeout_s=3.0)
    v0 = bootstrap_v0(s, database, tiny_base)
    set_id = labeled_set(database, v0.id)
    run_id = create_run(database, [set_id], deploy=True)

    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--no-sampler"],
            cwd=ROOT,
            env=_worker_env(s, db_url),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with database.session() as db:
                if training.metric_series(db, run_id).get("sft/loss") or run_state(database, run_id).stage in ("rm", "ppo"):
                    break
            assert proc.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.05)
        else:
            pytest.fail(f"the worker never started training: {log_path.read_text()[-3000:]}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed_at = time.monotonic()

    run = run_state(database, run_id)
    assert run.status == "running" and run.attempts == 1  # nobody knows yet
    with database.session() as db:
        assert workers.reap_stale_runs(db, s.heartbeat_timeout_s, s.run_max_retries) == []
    time.sleep(max(0.0, s.heartbeat_timeout_s + 0.5 - (time.monotonic() - killed_at)))

    # Any worker reaps: the second worker's first pass requeues the run, then claims and completes it.
    second = TrainerWorker(s, database, sampler=False)
    second.run_once()
    run = run_state(database, run_id)
    assert run.status == "succeeded", (run.error, logs_of(database, run_id))
    assert run.attempts == 2 and run.worker_id == second.worker_id
    log = logs_of(database, run_id)
    assert "worker lost: no heartbeat for" in log and "requeued, attempt 1 of 2" in log
    assert "reusing the snapshot of an earlier attempt" in log
    with database.session() as db:
        registered = db.scalars(select(Policy).where(Policy.training_run_id == run_id)).all()
        assert len(registered) == 1 and registered[0].id == run.policy_id and registered[0].deployed
        assert db.scalar(select(func.count(Policy.id))) == 2  # v0 and the one completed policy
        killed = db.scalars(select(Worker).where(Worker.id != second.worker_id)).all()
        assert killed and all(w.status == "lost" for w in killed)
    assert "Traceback" not in log_path.read_text()


def test_kill_9_past_the_retry_limit_fails_the_run(settings, database, tiny_base) -> None:
    """The same loss with no retries left: the run fails with the reason, nothing registered."""
    s = fast_settings(settings, run_max_retries=0)
    v0 = bootstrap_v0(s, database, tiny_base)
    run_id = create_run(database, [labeled_set(database, v0.id)])
    with database.session() as db:
        workers.claim_run(db, "a-worker-that-dies")
    age_heartbeat(database, run_id, s.heartbeat_timeout_s + 1)
    TrainerWorker(s, database, sampler=False).run_once()
    run = run_state(database, run_id)
    assert run.status == "failed" and run.error.startswith("worker lost: no heartbeat for")
    with database.session() as db:
        assert db.scalar(select(func.count(Policy.id))) == 1


def test_sigterm_requeues_the_run_without_counting_the_attempt(settings, database, db_url, tiny_base, tmp_path) -> None:
    s = fast_settings(settings)
    v0 = bootstrap_v0(s, database, tiny_base)
    run_id = create_run(database, [labeled_set(database, v0.id)], config={**TINY_CONFIG, "ppo_iterations": 100000})
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--no-sampler"],
            cwd=ROOT,
            env=_worker_env(s, db_url),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and run_state(database, run_id).stage != "ppo":
            assert proc.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run = run_state(database, run_id)
    assert (run.status, run.attempts, run.worker_id) == ("queued", 0, None), log_path.read_text()[-2000:]
    assert "requeued: the worker was stopped" in logs_of(database, run_id)


def test_the_worker_applies_rlhf_torch_threads(settings, database) -> None:
    import torch

    from trainer.worker import TrainerWorker

    before = torch.get_num_threads()
    try:
        TrainerWorker(settings.model_copy(update={"torch_threads": 1}), database, sampler=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)

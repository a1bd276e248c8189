"""A worker killed with SIGKILL in each stage of a round (SFT, RM, PPO, promote).

The worker runs as a real `rlhf worker` subprocess with ``RLHF_FAULT_PAUSE_AT`` set
(trainer/faults.py), so it stops at a known point and is killed there:

* ``sft``, ``ppo`` - the first optimizer step of the stage;
* ``rm-saved`` - the reward model is in ``reward_models/v1`` but not registered;
* ``promote`` - the policy's files are in ``policies/.staging-run<id>-*``, not published as ``vN``;
* ``register`` - ``policies/v1`` is complete, the registering transaction has not run.

After the heartbeat timeout the run is requeued; nothing half-written (and no unregistered
directory) is in the registry; a second worker completes the run and registers exactly
one new policy, numbered past any directory the killed worker left. PostgreSQL for each
stage, SQLite for the promote step (the two are the same code; one subprocess each, so
the test stays short).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from app.models import Policy, RewardModel
from app.services import workers
from tests.round_helpers import bootstrap_v0, create_run, fast_settings, labeled_set, logs_of, run_state
from tests.test_worker import _worker_env
from trainer import artifacts
from trainer.policy_io import validate_policy_dir
from trainer.worker import TrainerWorker

pytestmark = pytest.mark.usefixtures("single_torch_thread")

ROOT = Path(__file__).resolve().parent.parent


def _registered(database) -> tuple[list[tuple[int, str, int | None]], list[tuple[int, str, int | None]]]:  # type: ignore[no-untyped-def]
    with database.session() as db:
        pols = [(p.version, p.artifact_path, p.training_run_id) for p in db.scalars(select(Policy).order_by(Policy.version))]
        rms = [(r.version, r.artifact_path, r.training_run_id) for r in db.scalars(select(RewardModel).order_by(RewardModel.version))]
    return pols, rms


def _assert_registry_whole(database, root: Path) -> None:  # type: ignore[no-untyped-def]
    """Every registered policy / reward model is a complete vN directory (never .tmp-*/.staging-*)."""
    pols, rms = _registered(database)
    for version, rel, _ in pols:
        assert rel == artifacts.policy_rel_path(version), rel
        validate_policy_dir(artifacts.resolve(root, rel))
    for version, rel, _ in rms:
        assert rel == artifacts.reward_model_rel_path(version), rel
        assert (artifacts.resolve(root, rel) / "reward_model.json").is_file(), rel


@pytest.mark.parametrize(
    ("backend", "point"),
    [
        ("postgres", "sft"),
        ("postgres", "rm-saved"),
        ("postgres", "ppo"),
        ("postgres", "register"),
        ("sqlite", "promote"),
    ],
    indirect=["backend"],
)
def test_sigkill_in_a_stage_requeues_the_run_and_the_next_worker_completes_it(
    point: str, settings, database, db_url, tiny_base, tmp_path
) -> None:
    s = fast_settings(settings, heartbeat_timeout_s=3.0)
    root = s.resolved_artifacts_dir
    v0 = bootstrap_v0(s, database, tiny_base)
    run_id = create_run(database, [labeled_set(database, v0.id)], deploy=True)

    log_path = tmp_path / "worker.log"
    marker = f"fault injection: paused at {point}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--no-sampler"],
            cwd=ROOT,
            env={**_worker_env(s, db_url), "RLHF_FAULT_PAUSE_AT": point},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        while marker not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"the worker never reached {point}: {log_path.read_text()[-3000:]}"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed_at = time.monotonic()

    # What the killed worker left on disk, and that none of it is registered.
    policies_dir = root / artifacts.POLICIES
    left = sorted(p.name for p in policies_dir.iterdir())
    if point == "promote":
        assert any(name.startswith(f".staging-run{run_id}-") for name in left), left
    if point == "register":
        validate_policy_dir(policies_dir / "v1")  # complete, but never registered
    if point == "rm-saved":
        assert (root / artifacts.REWARD_MODELS / "v1" / "reward_model.json").is_file()
    pols, rms = _registered(database)
    assert [v for v, _, _ in pols] == [0]
    assert rms == ([(1, "reward_models/v1", run_id)] if point in ("ppo", "promote", "register") else [])
    _assert_registry_whole(database, root)

    run = run_state(database, run_id)
    assert (run.status, run.attempts, run.policy_id) == ("running", 1, None)
    time.sleep(max(0.0, s.heartbeat_timeout_s + 0.5 - (time.monotonic() - killed_at)))
    with database.session() as db:
        assert workers.reap_stale_runs(db, s.heartbeat_timeout_s, s.run_max_retries) == [(run_id, "requeued")]
    run = run_state(database, run_id)
    assert (run.status, run.worker_id, run.stage) == ("queued", None, None)

    second = TrainerWorker(s, database, sampler=False)
    second.run_once()
    run = run_state(database, run_id)
    assert run.status == "succeeded", (run.error, logs_of(database, run_id))
    assert run.attempts == 2 and run.worker_id == second.worker_id
    log = logs_of(database, run_id)
    assert "requeued, attempt 1 of 2" in log and "reusing the snapshot of an earlier attempt" in log

    pols, rms = _registered(database)
    new = [(v, rel) for v, rel, rid in pols if rid == run_id]
    expected_version = 2 if point == "register" else 1  # past the complete v1 left behind
    assert new == [(expected_version, f"policies/v{expected_version}")], pols
    assert len(pols) == 2
    with database.session() as db:
        policy = db.get(Policy, run.policy_id)
        assert policy is not None and policy.version == expected_version and policy.deployed
    # The second attempt trained its own reward model, numbered past any directory left behind.
    assert [v for v, _, rid in rms if rid == run_id][-1] == (2 if point != "sft" else 1)
    _assert_registry_whole(database, root)
    assert "Traceback" not in log_path.read_text()

"""Training rounds end to end on the tiny model: SFT -> RM -> PPO -> evaluate -> register.

Rankings and demonstrations are written straight into the database (as the labeling API
would), then a real worker claims and runs the round. The helpers are in
tests/round_helpers.py, the fixtures in tests/conftest.py.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.models import Completion, Policy, Prompt, Ranking, RewardModel, TrainingRun, User
from app.models.base import utcnow
from app.services import policies, training
from tests.factories import make_prompt_set, make_prompts
from tests.round_helpers import (
    OPEN_GATES,
    TINY_CONFIG,
    add_demonstration,
    add_ranking,
    bootstrap_v0,
    create_run,
    fast_settings,
    labeled_set,
    logs_of,
    make_labeler,
    run_state,
)
from trainer import artifacts
from trainer.data import load_round_data, take_snapshot
from trainer.policy_io import validate_policy_dir
from trainer.worker import TrainerWorker

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# ----------------------------------------------------------------------------- tests


def test_full_round_registers_and_deploys_v1_and_the_sampler_serves_it(settings, database, tiny_base) -> None:
    s = fast_settings(settings)
    v0 = bootstrap_v0(s, database, tiny_base)
    set_id = labeled_set(database, v0.id)
    run_id = create_run(database, [set_id], deploy=True)

    worker = TrainerWorker(s, database)
    worker.run_once()

    run = run_state(database, run_id)
    assert run.status == "succeeded", (run.error, logs_of(database, run_id))
    assert run.progress == 1.0 and run.attempts == 1 and run.base_policy_id == v0.id
    assert run.snapshot["counts"]["rankings"] == 6 and run.snapshot["counts"]["demonstrations"] == 4
    assert len(run.snapshot["sha256"]) == 64
    assert {"sft", "rm", "ppo", "eval"} <= set(run.metrics)
    assert "val_accuracy" in run.metrics["rm"]
    with database.session() as db:
        v1 = db.get(Policy, run.policy_id)
        assert v1 is not None and v1.version == 1 and v1.parent_id == v0.id and v1.training_run_id == run_id
        assert v1.deployed and v1.status == "ready"
        assert not db.get(Policy, v0.id).deployed
        assert {"win_rate", "kl_from_prev", "kl_from_v0"} <= set(v1.metrics)
        assert v1.metrics["stages"] == ["sft", "ppo"]
        validate_policy_dir(artifacts.resolve(s.resolved_artifacts_dir, v1.artifact_path))
        rm = db.scalar(select(RewardModel).where(RewardModel.training_run_id == run_id))
        assert rm is not None and (s.resolved_artifacts_dir / rm.artifact_path / "reward_model.json").is_file()
        series = training.metric_series(db, run_id)
        for key in ("sft/loss", "rm/accuracy", "ppo/reward", "ppo/kl", "ppo/entropy", "eval/win_rate"):
            assert series.get(key), f"missing metric series {key}: {sorted(series)}"
        # The same worker pass then filled the buffer from v1.
        served = db.scalars(select(Completion.policy_id).where(Completion.status == "ready", Completion.policy_id != v0.id)).all()
        assert served and set(served) == {v1.id}
    assert "registered policy v1 from v0 (sft + ppo); deployed" in logs_of(database, run_id)


def test_round_without_rankings_skips_rm_and_ppo_and_says_why(settings, database, tiny_base) -> None:
    s = fast_settings(settings)
    v0 = bootstrap_v0(s, database, tiny_base)
    set_id = labeled_set(database, v0.id, rankings=0, demonstrations=3)
    run_id = create_run(database, [set_id])
    TrainerWorker(s, database, sampler=False).run_once()

    run = run_state(database, run_id)
    assert run.status == "succeeded", run.error
    assert run.metrics["skipped"] == {
        "rm": "no rankings in the snapshot",
        "ppo": "no usable reward model (no rankings in the snapshot)",
    }
    log = logs_of(database, run_id)
    assert "rm skipped: no rankings in the snapshot" in log and "ppo skipped: no usable reward model" in log
    with database.session() as db:
        v1 = db.get(Policy, run.policy_id)
        assert v1 is not None and v1.version == 1 and v1.metrics["stages"] == ["sft"]
        assert not v1.deployed  # the round did not ask to deploy
        assert "win_rate" not in v1.metrics and "kl_from_prev" in v1.metrics


def test_without_demonstrations_the_reward_bias_is_set_on_policy_samples(settings, database, tiny_base) -> None:
    s = fast_settings(settings)
    v0 = bootstrap_v0(s, database, tiny_base)
    set_id = labeled_set(database, v0.id, rankings=5, demonstrations=0)
    run_id = create_run(database, [set_id], stages=["rm", "ppo"], config={**TINY_CONFIG, "ppo_iterations": 1})
    TrainerWorker(s, database, sampler=False).run_once()
    run = run_state(database, run_id)
    assert run.status == "succeeded", (run.error, logs_of(database, run_id))
    assert "bias set so 8 policy samples score mean 0" in logs_of(database, run_id)
    assert "sft" not in run.metrics and "skipped" not in run.metrics
    with database.session() as db:
        policy = db.get(Policy, run.policy_id)
        assert policy.metrics["stages"] == ["ppo"] and policy.metrics["reward_model_id"] == run.metrics["reward_model_id"]
        rm = db.get(RewardModel, run.metrics["reward_model_id"])
        assert rm.version == 1 and rm.artifact_path == "reward_models/v1"


def test_the_next_round_fine_tunes_only_on_demonstrations_its_lineage_has_not_seen(settings, database, tiny_base) -> None:
    s = fast_settings(settings)
    v0 = bootstrap_v0(s, database, tiny_base)
    set_id = labeled_set(database, v0.id, rankings=0, demonstrations=3)
    first = create_run(database, [set_id], stages=["sft"], deploy=True)
    TrainerWorker(s, database, sampler=False).run_once()
    assert run_state(database, first).status == "succeeded"

    # v1 (deployed) was fine-tuned on all three: a second SFT round has nothing new to learn.
    second = create_run(database, [set_id], stages=["sft"], deploy=True)
    TrainerWorker(s, database, sampler=False).run_once()
    run = run_state(database, second)
    assert run.status == "succeeded" and run.policy_id is None
    assert run.metrics["skipped"]["sft"] == (
        "no new demonstrations: v1 was already fine-tuned on all 3 in the snapshot (sft_demonstrations=new)"
    )

    # One new demonstration: only that one is trained on.
    with database.session() as db:
        prompt = db.scalars(select(Prompt).where(Prompt.prompt_set_id == set_id, Prompt.split == "train")).first()
        labeler = db.scalars(select(User)).first()
        add_demonstration(db, prompt, labeler, "a fresh demonstration")
    third = create_run(database, [set_id], stages=["sft"], deploy=True)
    TrainerWorker(s, database, sampler=False).run_once()
    assert run_state(database, third).status == "succeeded"
    assert "sft: 1 demonstrations (0 validation), 1 epochs, 1 steps; 3 already trained on by this lineage left out" in logs_of(
        database, third
    )

    # sft_demonstrations=all trains on every one again.
    fourth = create_run(database, [set_id], stages=["sft"], config={**TINY_CONFIG, "sft_demonstrations": "all"})
    TrainerWorker(s, database, sampler=False).run_once()
    assert run_state(database, fourth).status == "succeeded"
    assert "sft: 4 demonstrations (0 validation)" in logs_of(database, fourth)


def test_a_round_with_nothing_to_train_registers_nothing(settings, database, tiny_base) -> None:
    s = fast_settings(settings)
    v0 = bootstrap_v0(s, database, tiny_base)
    set_id = labeled_set(database, v0.id, rankings=0, demonstrations=0)
    run_id = create_run(database, [set_id], deploy=True)
    TrainerWorker(s, database, sampler=False).run_once()

    run = run_state(database, run_id)
    assert run.status == "succeeded" and run.policy_id is None
    assert run.metrics["summary"].startswith("nothing to train, nothing registered: every stage was skipped")
    assert "sft: no demonstrations in the snapshot" in run.metrics["summary"]
    with database.session() as db:
        assert db.scalar(select(func.count(Policy.id))) == 1
        assert policies.deployed_policy(db).id == v0.id
    assert not (s.resolved_artifacts_dir / "policies" / "v1").exists()


def test_cancel_stops_a_running_round_at_the_next_step(settings, database, tiny_base) -> None:
    s = fast_settings(settings)
    v0 = bootstrap_v0(s, database, tiny_base)
    set_id = labeled_set(database, v0.id)
    run_id = create_run(database, [set_id], config={**TINY_CONFIG, "ppo_iterations": 100000}, deploy=True)
    worker = TrainerWorker(s, database, sampler=False)
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with database.session() as db:
                if training.metric_series(db, run_id).get("ppo/reward"):
                    break
            time.sleep(0.2)
        else:
            pytest.fail(f"PPO never started: {logs_of(database, run_id)}")
        with database.session() as db:
            assert training.cancel_run(db, None, run_id).status == "running"
    finally:
        thread.join(timeout=120)
    assert not thread.is_alive()
    run = run_state(database, run_id)
    assert run.status == "cancelled", (run.status, run.error)
    assert run.policy_id is None and run.finished_at is not None
    assert "cancelled during ppo" in logs_of(database, run_id)
    with database.session() as db:
        assert db.scalar(select(func.count(Policy.id))) == 1


def test_snapshot_fixes_the_active_labels_created_before_the_run(settings, database) -> None:
    with database.session() as db:
        policy = policies.register_policy(db, version=0, artifact_path="policies/v0")
        ps = make_prompt_set(db, "snap", k=2)
        prompts = make_prompts(db, ps, [f"p{i}" for i in range(4)])
        gold = make_prompts(db, ps, ["gold prompt"], is_gold=True)[0]
        labeler = make_labeler(db)
        kept = add_ranking(db, prompts[0], labeler, policy.id, ["a", "b"])
        requeued = add_ranking(db, prompts[1], labeler, policy.id, ["c", "d"], status="requeued")
        add_ranking(db, gold, labeler, policy.id, ["e", "f"])
        demo = add_demonstration(db, prompts[2], labeler, "a demonstration")
        cutoff = utcnow()
        later = add_ranking(db, prompts[3], labeler, policy.id, ["g", "h"])
        later.created_at = cutoff + timedelta(seconds=5)
        db.flush()
        snap = take_snapshot(db, [ps.id], cutoff)
        assert snap["ids"]["rankings"] == [kept.id]
        assert requeued.id not in snap["ids"]["rankings"]
        assert snap["ids"]["demonstrations"] == [demo.id]
        assert gold.id not in snap["ids"]["prompts_train"] and len(snap["ids"]["prompts_train"]) == 4
        assert snap["counts"] == {"rankings": 1, "demonstrations": 1, "prompts_train": 4, "prompts_validation": 0}
        data = load_round_data(db, snap)
        assert len(data.rm_train) == 1 and data.rm_train[0].completions == ["a", "b"]
        assert data.rm_train[0].ranking == [[0], [1]]
        assert [d.completion for d in data.sft_train] == ["a demonstration"]
        # Labeling afterwards (a new ranking, the kept one requeued) does not change it.
        db.get(Ranking, kept.id).status = "requeued"
        db.flush()
        again = load_round_data(db, snap)
        assert len(again.rm_train) == 1
        tampered = {**snap, "ids": {**snap["ids"], "rankings": [kept.id, later.id]}}
        with pytest.raises(ValueError, match="sha256"):
            load_round_data(db, tampered)


def test_rlhf_train_round_wait_follows_the_run_to_its_end(settings, database, db_url, tiny_base, tmp_path) -> None:
    import os
    import subprocess
    import sys

    s = fast_settings(settings)
    v0 = bootstrap_v0(s, database, tiny_base)
    labeled_set(database, v0.id, "cli-set", rankings=0, demonstrations=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHF_DATABASE_URL": db_url, "RLHF_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "120"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "train", "round", "--set", "cli-set", "--stages", "sft",
         "--config", json.dumps({"sft_batch_size": 2, "sft_max_length": 64, "sft_min_demonstrations": 1, "sft_epochs": 1,
                                 "sft_min_steps": 0, "eval_prompts": 2, "eval_samples_per_prompt": 1,
                                 "eval_max_new_tokens": 4, **OPEN_GATES}), "--wait"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with database.session() as db:
                if db.scalar(select(TrainingRun.id)) is not None:
                    break
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.2)
        TrainerWorker(s, database, sampler=False).run_once()
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "queued training run 1" in out
    assert "sft: 2 demonstrations" in out  # the run's log lines are followed
    assert "run 1: succeeded - policy v1 from v0 (sft)" in out
    r = subprocess.run([sys.executable, "-m", "app.cli", "train", "round", "--set", "nope"], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "no prompt set named 'nope'" in r.stderr

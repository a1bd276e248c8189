"""The training JSON API: queue rounds, inspect runs, metrics, logs, cancel, workers; roles."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from app.models import AuditLog, RunLog, RunMetric, TrainingRun
from app.models.base import utcnow
from app.services import workers
from tests.factories import make_prompt_set


def a_set(database, name: str = "s") -> int:  # type: ignore[no-untyped-def]
    with database.session() as db:
        return make_prompt_set(db, name).id


def test_roles_labelers_get_403_and_anonymous_401(client, database, labeler) -> None:
    set_id = a_set(database)
    r = client.post("/api/v1/training/rounds", json={"prompt_set_ids": [set_id]}, headers=labeler.headers)
    assert r.status_code == 403
    for path in ("/api/v1/training/runs", "/api/v1/training/runs/1", "/api/v1/policies", "/api/v1/workers"):
        assert client.get(path, headers=labeler.headers).status_code == 403, path
        assert client.get(path).status_code == 401, path
    assert client.post("/api/v1/policies/1/deploy", headers=labeler.headers).status_code == 403
    assert client.post("/api/v1/training/runs/1/cancel", headers=labeler.headers).status_code == 403
    with database.session() as db:
        assert db.scalar(select(TrainingRun)) is None


def test_create_round_and_read_it_back(client, database, admin) -> None:
    set_id = a_set(database)
    body = {"prompt_set_ids": [set_id], "stages": ["ppo", "sft"], "deploy": True, "config": {"sft_epochs": 2}}
    r = client.post("/api/v1/training/rounds", json=body, headers=admin.headers)
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]

    run = client.get(f"/api/v1/training/runs/{run_id}", headers=admin.headers).json()
    assert {"id", "status", "stage", "progress", "metrics", "policy_id", "error"} <= set(run)
    assert run["status"] == "queued" and run["stage"] is None and run["progress"] == 0
    assert run["stages"] == ["sft", "ppo"] and run["deploy"] is True and run["config"] == {"sft_epochs": 2}
    assert run["prompt_set_ids"] == [set_id] and run["created_by_id"] == admin.id
    listed = client.get("/api/v1/training/runs", headers=admin.headers).json()
    assert [x["id"] for x in listed] == [run_id]
    with database.session() as db:
        entry = db.scalar(select(AuditLog).where(AuditLog.action == "training.round_create"))
        assert entry is not None and entry.actor_id == admin.id and entry.target_id == str(run_id)

    keys = {k["name"]: k for k in client.get("/api/v1/training/config", headers=admin.headers).json()}
    from trainer.config import SFTConfig

    assert keys["sft_epochs"]["default"] == SFTConfig().epochs and keys["rm_unacceptable"]["choices"] == ["keep", "skip"]


def test_bad_rounds_are_refused_with_422(client, database, admin) -> None:
    set_id = a_set(database)
    cases = [
        ({"prompt_set_ids": [set_id, 999]}, "prompt set(s) 999 do not exist"),
        ({"prompt_set_ids": []}, None),
        ({"prompt_set_ids": [set_id], "stages": ["warp"]}, None),
        ({"prompt_set_ids": [set_id], "stages": ["sft", "ppo", "dpo"]}, "choose one of ppo or dpo"),
        ({"prompt_set_ids": [set_id], "deploy": "maybe"}, None),
        ({"prompt_set_ids": [set_id], "stages": []}, "at least one stage"),
        ({"prompt_set_ids": [set_id], "config": {"sft_lr": 1e-5, "warp_speed": 9}}, "unknown config key(s): warp_speed"),
        ({"prompt_set_ids": [set_id], "config": {"sft_epochs": "two"}}, "sft_epochs must be a number"),
        ({"prompt_set_ids": [set_id], "config": {"sft_epochs": 1.5}}, "whole number"),
        ({"prompt_set_ids": [set_id], "config": {"ppo_iterations": 0}}, "at least 1"),
        ({"prompt_set_ids": [set_id], "config": {"rm_unacceptable": "maybe"}}, "keep, skip"),
        ({"prompt_set_ids": [set_id], "config": {"sft_assistant_turns": "every"}}, "sft_assistant_turns must be one of last, all"),
        ({"prompt_set_ids": [set_id], "config": {"ppo_rollout_batch_size": 6, "ppo_minibatch_size": 4}}, "multiple"),
    ]
    for body, message in cases:
        r = client.post("/api/v1/training/rounds", json=body, headers=admin.headers)
        assert r.status_code == 422, (body, r.text)
        if message:
            assert message in r.json()["detail"], (body, r.json())
    with database.session() as db:
        assert db.scalar(select(TrainingRun)) is None


def test_metrics_logs_and_cancel(client, database, admin) -> None:
    set_id = a_set(database)
    run_id = client.post("/api/v1/training/rounds", json={"prompt_set_ids": [set_id]}, headers=admin.headers).json()["run_id"]
    with database.session() as db:
        workers.add_metrics(db, run_id, [("sft", 2, "loss", 1.5), ("sft", 1, "loss", 2.0), ("ppo", 1, "kl", 0.01)])
        workers.add_log(db, run_id, "hello from the worker")
    series = client.get(f"/api/v1/training/runs/{run_id}/metrics", headers=admin.headers).json()["series"]
    assert series == {"sft/loss": [[1, 2.0], [2, 1.5]], "ppo/kl": [[1, 0.01]]}
    logs = client.get(f"/api/v1/training/runs/{run_id}/logs", headers=admin.headers).json()
    assert [line["message"] for line in logs] == ["hello from the worker"]
    after = client.get(f"/api/v1/training/runs/{run_id}/logs?after_id={logs[-1]['id']}", headers=admin.headers).json()
    assert after == []

    r = client.post(f"/api/v1/training/runs/{run_id}/cancel", headers=admin.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    r = client.post(f"/api/v1/training/runs/{run_id}/cancel", headers=admin.headers)
    assert r.status_code == 409 and "already cancelled" in r.json()["detail"]
    assert client.get("/api/v1/training/runs/999", headers=admin.headers).status_code == 404
    assert client.get("/api/v1/training/runs/999/metrics", headers=admin.headers).status_code == 404

    # A running run is only flagged: its worker stops at the next step.
    run2 = client.post("/api/v1/training/rounds", json={"prompt_set_ids": [set_id]}, headers=admin.headers).json()["run_id"]
    with database.session() as db:
        claimed, _ = workers.claim_run(db, "w")
        assert claimed.id == run2
    r = client.post(f"/api/v1/training/runs/{run2}/cancel", headers=admin.headers)
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    with database.session() as db:
        assert db.scalars(select(RunLog.message).where(RunLog.run_id == run2)).all()[-1].startswith("cancel requested")
        assert db.scalar(select(AuditLog).where(AuditLog.action == "training.run_cancel", AuditLog.target_id == str(run2)))
        assert db.scalar(select(RunMetric).where(RunMetric.run_id == run2)) is None


def test_workers_endpoint_reports_liveness(client, database, admin, settings) -> None:
    with database.session() as db:
        workers.register_worker(db, "host-a:1:abc", "host-a", "cpu")
        old = workers.register_worker(db, "host-b:2:def", "host-b", "cuda (NVIDIA H100)")
        old.last_seen_at = utcnow() - timedelta(seconds=settings.heartbeat_timeout_s + 30)
    rows = {w["id"]: w for w in client.get("/api/v1/workers", headers=admin.headers).json()}
    assert rows["host-a:1:abc"]["alive"] is True and rows["host-a:1:abc"]["device"] == "cpu"
    assert rows["host-b:2:def"]["alive"] is False

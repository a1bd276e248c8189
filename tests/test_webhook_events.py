"""The four webhook events: emitted by the services where they happen, in the same
transaction (the outbox), with the payloads docs/webhooks.md describes, once each."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.config import Settings
from app.db import Database
from app.main import create_app
from app.models import TrainingRun, WebhookDelivery
from app.models.base import utcnow
from app.services import webhooks, workers
from tests.conftest import Account
from tests.eval_helpers import eval_setup
from tests.factories import make_policy, ready_set


@pytest.fixture
def quiet_client(settings: Settings, database: Database) -> Iterator[TestClient]:
    """The app without its background deliverer: these tests read the outbox rows."""
    with TestClient(create_app(settings.model_copy(update={"webhook_deliver": False}), database),
                    base_url="http://testserver") as c:
        yield c


def _subscribe(database: Database, *events: str, active: bool = True) -> int:
    with database.session() as db:
        return webhooks.create_webhook(db, None, "http://127.0.0.1:9/hook", list(events), is_active=active).id


def _events(database: Database) -> list[dict[str, Any]]:
    """The bodies of the outbox, oldest first."""
    with database.session() as db:
        return [json.loads(d.body) for d in db.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id))]


def _data(database: Database, event: str) -> list[dict[str, Any]]:
    return [b["data"] for b in _events(database) if b["event"] == event]


def _queued_run(database: Database, **kw: Any) -> int:
    with database.session() as db:
        run = TrainingRun(prompt_set_ids=[1], stages=["sft", "rm", "ppo"], **kw)
        db.add(run)
        db.flush()
        return run.id


# --- round.finished -------------------------------------------------------------------


def test_round_finished_carries_status_gates_and_policy_version(database) -> None:
    _subscribe(database, "round.finished")
    with database.session() as db:
        base = make_policy(db)
        new = make_policy(db, deployed=False, artifact_path="policies/v1")
    run_id = _queued_run(database)
    gates = {"rm": {"passed": True, "value": 0.71, "low": 0.6, "high": 0.8, "n": 40},
             "deploy": {"passed": True, "checks": [{"name": "win_rate", "passed": True, "value": 0.6}]}}
    with database.session() as db:
        _, lease = workers.claim_run(db, "w1")
        assert workers.finish_run(db, lease, "succeeded", progress=1.0, policy_id=new.id,
                                  metrics={"gates": gates, "deployed": True, "summary": "policy v1 from v0"})
        assert not workers.finish_run(db, lease, "failed")  # the lease is gone: no second event
    (data,) = _data(database, "round.finished")
    assert data["run_id"] == run_id and data["status"] == "succeeded"
    assert data["gates"] == gates and data["policy_id"] == new.id and data["policy_version"] == 1
    assert data["deployed"] is True and data["summary"] == "policy v1 from v0" and data["error"] is None
    assert data["stages"] == ["sft", "rm", "ppo"] and data["finished_at"] and base.version == 0


def test_round_finished_on_cancel_and_on_a_lost_worker(quiet_client, admin, database) -> None:
    _subscribe(database, "round.finished")
    cancelled = _queued_run(database)
    assert quiet_client.post(f"/api/v1/training/runs/{cancelled}/cancel", headers=admin.headers).status_code == 200
    lost = _queued_run(database)
    with database.session() as db:
        workers.claim_run(db, "w1")
    with database.session() as db:
        assert workers.reap_stale_runs(db, 60, max_retries=0, now=utcnow() + timedelta(minutes=5)) == [(lost, "failed")]
    found = {d["run_id"]: d for d in _data(database, "round.finished")}
    assert found[cancelled]["status"] == "cancelled" and found[cancelled]["policy_version"] is None
    assert found[lost]["status"] == "failed" and found[lost]["error"].startswith("worker lost")


def test_no_delivery_without_a_subscribed_active_hook(database) -> None:
    _subscribe(database, "policy.deployed")  # another event
    _subscribe(database, "round.finished", active=False)  # paused
    _queued_run(database)
    with database.session() as db:
        _, lease = workers.claim_run(db, "w1")
        workers.finish_run(db, lease, "failed", error="boom")
    assert _events(database) == []


def test_an_event_is_written_with_its_transaction_only(database) -> None:
    """The outbox row commits or rolls back with the change that caused it."""
    _subscribe(database, "round.finished")
    _queued_run(database)
    with database.session() as db:
        _, lease = workers.claim_run(db, "w1")
    with pytest.raises(RuntimeError), database.session() as db:
        workers.finish_run(db, lease, "failed", error="boom")
        raise RuntimeError("the worker's transaction fails after the update")
    assert _events(database) == []
    with database.session() as db:
        assert workers.finish_run(db, lease, "failed", error="boom")
    assert len(_events(database)) == 1


# --- policy.deployed ------------------------------------------------------------------


def test_policy_deployed_names_both_versions_and_who(quiet_client, admin, database) -> None:
    _subscribe(database, "policy.deployed")
    with database.session() as db:
        old = make_policy(db)
        new = make_policy(db, deployed=False, artifact_path="policies/v1", training_run_id=7)
    assert quiet_client.post(f"/api/v1/policies/{new.id}/deploy", headers=admin.headers).status_code == 200
    assert quiet_client.post(f"/api/v1/policies/{new.id}/deploy", headers=admin.headers).status_code == 200  # no-op
    (data,) = _data(database, "policy.deployed")
    assert data["policy_id"] == new.id and data["version"] == 1 and data["training_run_id"] == 7
    assert data["previous_policy_id"] == old.id and data["previous_version"] == 0
    assert data["deployed_by"] == admin.username and data["deployed_at"]


# --- prompt_set.completed -------------------------------------------------------------


def test_prompt_set_completed_once_when_its_last_rank_slot_fills(quiet_client, make_account, database) -> None:
    _subscribe(database, "prompt_set.completed")
    with database.session() as db:
        ps, prompts, policy = ready_set(db, "done-set", n_prompts=2, k=2, overlap=1)
    labeler: Account = make_account("labeler")
    for i in range(2):
        assert _data(database, "prompt_set.completed") == []
        task = quiet_client.post("/api/v1/tasks/next", json={"prompt_set_id": ps.id, "kind": "rank"},
                                 headers=labeler.headers).json()
        ranking = [[c["id"]] for c in task["completions"]]
        r = quiet_client.post(f"/api/v1/tasks/{task['id']}/ranking", json={"ranking": ranking}, headers=labeler.headers)
        assert r.status_code == 201, r.text
        again = quiet_client.post(f"/api/v1/tasks/{task['id']}/ranking", json={"ranking": ranking},
                                  headers=labeler.headers)
        assert again.status_code == 200  # the same answer again: no new event
    (data,) = _data(database, "prompt_set.completed")
    assert data["prompt_set_id"] == ps.id and data["name"] == "done-set"
    assert data["policy_version"] == policy.version and data["prompts"] == 2
    assert data["slots"] == 2 and data["rankings"] == 2 and data["comparisons"] == 2


# --- evaluation.finished --------------------------------------------------------------


def _evaluation(client: TestClient, admin: Account, setup: Any, name: str) -> dict[str, Any]:
    body = {"name": name, "policy_ids": setup.policy_ids, "prompt_set_ids": [setup.prompt_set_id]}
    r = client.post("/api/v1/evaluations", json=body, headers=admin.headers)
    assert r.status_code == 201, r.text
    return r.json()


def test_evaluation_finished_when_complete_and_when_closed(quiet_client, admin, make_account, database) -> None:
    _subscribe(database, "evaluation.finished")
    with database.session() as db:
        setup = eval_setup(db, n_prompts=2)
    complete = _evaluation(quiet_client, admin, setup, "complete-me")
    labeler = make_account("labeler")
    while (r := quiet_client.post("/api/v1/tasks/next", json={"evaluation_id": complete["id"], "kind": "compare"},
                                  headers=labeler.headers)).status_code == 200:
        assert _data(database, "evaluation.finished") == []
        done = quiet_client.post(f"/api/v1/tasks/{r.json()['id']}/comparison", json={"choice": "a"},
                                 headers=labeler.headers)
        assert done.status_code == 201, done.text
    (data,) = _data(database, "evaluation.finished")
    assert data["evaluation_id"] == complete["id"] and data["reason"] == "complete" and data["judgments"] == 2
    assert data["policy_ids"] == setup.policy_ids and data["policy_versions"] == [0, 1]
    assert data["training_run_id"] is None and data["human_gate"] is None

    closed = _evaluation(quiet_client, admin, setup, "close-me")
    for ev in (complete, closed):
        r = quiet_client.post(f"/api/v1/evaluations/{ev['id']}/status", json={"status": "closed"},
                              headers=admin.headers)
        assert r.status_code == 200, r.text
    found = _data(database, "evaluation.finished")
    assert [(d["evaluation_id"], d["reason"]) for d in found] == [(complete["id"], "complete"), (closed["id"], "closed")]
    assert found[1]["status"] == "closed" and found[1]["judgments"] == 0

"""The evaluations API: creating evaluations, blind compare tasks, idempotent judgments,
the leaderboard, the verdict and the export."""

from __future__ import annotations

import json
import re
from collections import Counter


from app.models import Policy
from tests.eval_helpers import add_samples, eval_setup


def _create(client, admin, setup, **kw):  # type: ignore[no-untyped-def]
    body = {"name": kw.pop("name", "eval"), "policy_ids": setup.policy_ids, "prompt_set_ids": [setup.prompt_set_id], **kw}
    return client.post("/api/v1/evaluations", json=body, headers=admin.headers)


def _next(client, account, ev_id):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/tasks/next", json={"evaluation_id": ev_id, "kind": "compare"}, headers=account.headers)


def test_create_needs_samples_and_opens_when_they_exist(client, admin, labeler, database) -> None:  # type: ignore[no-untyped-def]
    with database.session() as db:
        setup = eval_setup(db, n_prompts=3, samples=False)
    r = _create(client, admin, setup)
    assert r.status_code == 201, r.text
    ev = r.json()
    assert ev["status"] == "sampling" and ev["missing_samples"] == 6
    assert ev["comparisons"] == 3 and ev["prompts"] == 3
    assert _next(client, labeler, ev["id"]).status_code == 204  # nothing served while sampling
    with database.session() as db:
        add_samples(db, setup.prompt_ids, setup.policy_ids)
    r2 = _create(client, admin, setup, name="second")
    assert r2.json()["status"] == "active" and r2.json()["missing_samples"] == 0
    listed = client.get("/api/v1/evaluations", headers=admin.headers).json()
    assert [e["name"] for e in listed] == ["second", "eval"]
    # labelers cannot create or read evaluations
    assert _create(client, labeler, setup, name="nope").status_code == 403
    assert client.get(f"/api/v1/evaluations/{ev['id']}/leaderboard", headers=labeler.headers).status_code == 403


def test_create_validation_errors(client, admin, database) -> None:  # type: ignore[no-untyped-def]
    with database.session() as db:
        setup = eval_setup(db, n_prompts=2)
    one = {"name": "x", "policy_ids": setup.policy_ids[:1], "prompt_set_ids": [setup.prompt_set_id]}
    assert client.post("/api/v1/evaluations", json=one, headers=admin.headers).status_code == 422
    missing = {"name": "x", "policy_ids": [*setup.policy_ids, 999], "prompt_set_ids": [setup.prompt_set_id]}
    assert client.post("/api/v1/evaluations", json=missing, headers=admin.headers).status_code == 404
    train = _create(client, admin, setup, split="train")
    assert train.status_code == 422 and "no prompts" in train.json()["detail"]
    assert _create(client, admin, setup).status_code == 201
    assert _create(client, admin, setup).status_code == 409  # same name


def test_compare_task_is_blind_and_judgments_are_idempotent(client, admin, labeler, database) -> None:  # type: ignore[no-untyped-def]
    with database.session() as db:
        setup = eval_setup(db, n_prompts=2)
        versions = [db.get(Policy, pid).version for pid in setup.policy_ids]
    ev = _create(client, admin, setup).json()
    r = _next(client, labeler, ev["id"])
    assert r.status_code == 200, r.text
    task = r.json()
    assert task["kind"] == "compare" and [s["side"] for s in task["sides"]] == ["a", "b"]
    raw = json.dumps(task)
    assert "policy" not in raw and "completion_ids" not in raw
    for v in versions:
        assert not re.search(rf"\bv{v}\b", raw)
    assert set(task) == {"id", "kind", "status", "evaluation_id", "prompt", "messages", "sides",
                         "lease_expires_at", "created_at", "server_time", "previous"}
    # the same lease again
    assert _next(client, labeler, ev["id"]).json()["id"] == task["id"]
    assert client.get(f"/api/v1/tasks/{task['id']}", headers=labeler.headers).json()["sides"] == task["sides"]
    url = f"/api/v1/tasks/{task['id']}/comparison"
    body = {"choice": "a", "ratings": {"a": {"likert": 6, "flags": []}, "b": {"likert": 2, "flags": ["made_up_facts"]}}}
    assert client.post(url, json={"choice": "maybe"}, headers=labeler.headers).status_code == 422
    bad = client.post(url, json={"choice": "a", "ratings": {"c": {"likert": 3}}}, headers=labeler.headers)
    assert bad.status_code == 422 and "side" in bad.json()["detail"]
    first = client.post(url, json=body, headers=labeler.headers)
    assert first.status_code == 201, first.text
    assert "policy" not in json.dumps(first.json())
    again = client.post(url, json=body, headers=labeler.headers)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert client.post(url, json={"choice": "b"}, headers=labeler.headers).status_code == 409
    # a rank answer on a compare task is refused
    assert client.post(f"/api/v1/tasks/{task['id']}/ranking", json={"ranking": [[1]]}, headers=labeler.headers).status_code == 422
    # undo gives the task back with the answer
    undone = client.post(f"/api/v1/tasks/{task['id']}/undo", headers=labeler.headers)
    assert undone.status_code == 200 and undone.json()["previous"]["choice"] == "a"
    assert client.post(url, json={"choice": "tie"}, headers=labeler.headers).status_code == 201
    # the second prompt, then nothing (overlap 1, never the same comparison twice)
    t2 = _next(client, labeler, ev["id"]).json()
    assert t2["id"] != task["id"]
    assert client.post(f"/api/v1/tasks/{t2['id']}/skip", json={}, headers=labeler.headers).status_code == 200
    assert _next(client, labeler, ev["id"]).status_code == 204
    progress = client.get(f"/api/v1/tasks/progress?evaluation_id={ev['id']}", headers=labeler.headers).json()
    assert progress["compared"] == 1 and progress["compare_left"] == 0


def test_sides_are_balanced(client, admin, make_account, database) -> None:  # type: ignore[no-untyped-def]
    with database.session() as db:
        setup = eval_setup(db, n_prompts=20, n_policies=3)
    ev = _create(client, admin, setup, overlap=2).json()
    assert ev["comparisons"] == 60
    first_policy_on_a: Counter[str] = Counter()
    for _ in range(4):
        account = make_account("labeler")
        while (r := _next(client, account, ev["id"])).status_code == 200:
            t = r.json()
            m = re.search(r"number (\d)", t["sides"][0]["text"])
            other = re.search(r"number (\d)", t["sides"][1]["text"])
            first_policy_on_a[f"{min(m.group(1), other.group(1))}{'a' if m.group(1) < other.group(1) else 'b'}"] += 1
            client.post(f"/api/v1/tasks/{t['id']}/comparison", json={"choice": "a"}, headers=account.headers)
    assert sum(first_policy_on_a.values()) == 120  # 60 comparisons x overlap 2, never beyond
    for lower in ("0", "1"):
        on_a, on_b = first_policy_on_a[f"{lower}a"], first_policy_on_a[f"{lower}b"]
        assert abs(on_a - on_b) <= 0.1 * (on_a + on_b), first_policy_on_a


def test_leaderboard_verdict_and_export(client, admin, make_account, database) -> None:  # type: ignore[no-untyped-def]
    with database.session() as db:
        setup = eval_setup(db, n_prompts=12)
        new, old = setup.policy_ids[1], setup.policy_ids[0]
    ev = _create(client, admin, setup, overlap=2).json()
    for _ in range(2):
        account = make_account("labeler")
        while (r := _next(client, account, ev["id"])).status_code == 200:
            t = r.json()
            new_side = "a" if "number 1" in t["sides"][0]["text"] else "b"
            body = {"choice": new_side, "ratings": {new_side: {"likert": 6, "flags": []}}}
            assert client.post(f"/api/v1/tasks/{t['id']}/comparison", json=body, headers=account.headers).status_code == 201
    board = client.get(f"/api/v1/evaluations/{ev['id']}/leaderboard?rounds=50", headers=admin.headers).json()
    assert board["comparisons"] == 24
    assert [p["policy_id"] for p in board["policies"]] == [new, old]
    top = board["policies"][0]
    assert top["wins"] == 24 and top["mean_likert"] == 6.0
    assert board["pairs"][0]["comparisons"] == 24
    assert board["adjacent"][0]["separated"] is True
    assert board["agreement"]["rate"] == 1.0
    verdict = client.get(
        f"/api/v1/evaluations/{ev['id']}/verdict",
        params={"new_policy_id": new, "parent_policy_id": old},
        headers=admin.headers,
    ).json()
    assert verdict["verdict"] == "better" and verdict["complete"] and verdict["at_least_as_good"]
    r = client.get(f"/api/v1/exports/comparisons.jsonl?evaluation_id={ev['id']}", headers=admin.headers)
    assert r.status_code == 200
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert len(lines) == 24
    assert {"prompt", "completion_a", "completion_b", "policy_a", "policy_b", "choice", "ratings", "labeler"} <= set(lines[0])

"""Prompt sets through the JSON API: create, edit, who sees what, gold prompts, the audit log."""

from __future__ import annotations

from sqlalchemy import select

from app.models import AuditLog, Completion, Prompt
from app.services.prompt_sets import content_hash, wants_demonstration
from tests.factories import ready_set


def test_create_get_list_and_patch(client, admin, database) -> None:
    body = {"name": "helpful", "k": 4, "overlap": 2, "guidelines": "# Be kind\nPrefer *honest* answers."}
    r = client.post("/api/v1/prompt-sets", json=body, headers=admin.headers)
    assert r.status_code == 201, r.text
    ps = r.json()
    assert ps["id"] and ps["k"] == 4 and ps["overlap"] == 2 and ps["status"] == "active"
    assert ps["sampling"] == {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 128}
    assert ps["demonstration_share"] == 0.0
    r = client.patch(
        f"/api/v1/prompt-sets/{ps['id']}",
        json={"k": 6, "status": "paused", "sampling": {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 64},
              "description": "for the demo"},
        headers=admin.headers,
    )
    assert r.status_code == 200, r.text
    got = client.get(f"/api/v1/prompt-sets/{ps['id']}", headers=admin.headers).json()
    assert got["k"] == 6 and got["status"] == "paused" and got["sampling"]["max_new_tokens"] == 64
    assert got["overlap"] == 2 and got["guidelines"] == body["guidelines"]  # untouched fields stay
    assert [s["name"] for s in client.get("/api/v1/prompt-sets", headers=admin.headers).json()] == ["helpful"]
    with database.session() as db:
        actions = [(a.action, a.actor_id) for a in db.scalars(select(AuditLog).order_by(AuditLog.id))]
    assert actions == [("prompt_set.create", admin.id), ("prompt_set.update", admin.id)]


def test_validation_and_conflicts(client, admin) -> None:
    ok = {"name": "a", "k": 4, "overlap": 1}
    assert client.post("/api/v1/prompt-sets", json=ok, headers=admin.headers).status_code == 201
    r = client.post("/api/v1/prompt-sets", json=ok, headers=admin.headers)
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    for bad in ({"k": 1}, {"k": 10}, {"overlap": 0}, {"demonstration_share": 1.5}, {"status": "gone"},
                {"sampling": {"temperature": 0}}, {"sampling": {"beam": 3}}, {"name": ""}, {"colour": "red"}):
        r = client.post("/api/v1/prompt-sets", json={**ok, "name": "b", **bad}, headers=admin.headers)
        assert r.status_code == 422, bad
        assert list(bad)[0] in r.json()["message"], (bad, r.json())
    second = client.post("/api/v1/prompt-sets", json={**ok, "name": "b"}, headers=admin.headers).json()
    r = client.patch(f"/api/v1/prompt-sets/{second['id']}", json={"name": "a"}, headers=admin.headers)
    assert r.status_code == 409
    assert client.patch("/api/v1/prompt-sets/999", json={"k": 3}, headers=admin.headers).status_code == 404


def test_prompt_set_routes_are_admin_only(client, admin, labeler) -> None:
    set_id = client.post("/api/v1/prompt-sets", json={"name": "live"}, headers=admin.headers).json()["id"]
    for method, path, body in (
        ("GET", "/api/v1/prompt-sets", None),
        ("GET", f"/api/v1/prompt-sets/{set_id}", None),
        ("POST", "/api/v1/prompt-sets", {"name": "x"}),
        ("PATCH", f"/api/v1/prompt-sets/{set_id}", {"k": 3}),
        ("GET", f"/api/v1/prompt-sets/{set_id}/prompts", None),
    ):
        assert client.request(method, path, json=body, headers=labeler.headers).status_code == 403, path
        assert client.request(method, path, json=body).status_code == 401, path
    assert client.get(f"/api/v1/prompt-sets/{set_id}", headers=admin.headers).json()["name"] == "live"


def test_demonstration_share_change_redraws_every_prompt(client, admin, database) -> None:
    set_id = client.post("/api/v1/prompt-sets", json={"name": "demo"}, headers=admin.headers).json()["id"]
    prompts = [{"prompt": f"question {i}"} for i in range(300)]
    r = client.post(f"/api/v1/prompt-sets/{set_id}/prompts", json={"prompts": prompts}, headers=admin.headers)
    assert r.json()["imported"] == 300
    with database.session() as db:
        assert not any(db.scalars(select(Prompt.wants_demonstration)))
    client.patch(f"/api/v1/prompt-sets/{set_id}", json={"demonstration_share": 0.4}, headers=admin.headers)
    with database.session() as db:
        rows = db.execute(select(Prompt.text, Prompt.wants_demonstration)).all()
    assert all(want == wants_demonstration(content_hash(text), 0.4) for text, want in rows)
    assert 0.3 < sum(w for _, w in rows) / len(rows) < 0.5


def test_list_prompts_and_gold(client, admin, database) -> None:
    with database.session() as db:
        ps, prompts, _ = ready_set(db, "g", n_prompts=3, k=4)
        prompt_id = prompts[0].id
        a, b, c, d = db.scalars(select(Completion.id).where(Completion.prompt_id == prompt_id).order_by(Completion.id))
        (foreign,) = db.scalars(select(Completion.id).where(Completion.prompt_id == prompts[1].id).limit(1))
        set_id = ps.id
    listed = client.get(f"/api/v1/prompt-sets/{set_id}/prompts?limit=2", headers=admin.headers).json()
    assert [p["id"] for p in listed] == [prompts[0].id, prompts[1].id] and "metadata" in listed[0]
    detail = client.get(f"/api/v1/prompts/{prompt_id}", headers=admin.headers).json()
    assert [x["id"] for x in detail["completions"]] == [a, b, c, d]
    url = f"/api/v1/prompts/{prompt_id}/gold"
    for bad, why in (([[a, b, c, d]], "two"), ([[a], [a]], "twice"), ([[a], [foreign]], "not completions"),
                     ([[a], [b]], "exactly K=4")):
        r = client.put(url, json={"ranking": bad}, headers=admin.headers)
        assert r.status_code == 422 and why in r.json()["detail"], r.json()
    r = client.put(url, json={"ranking": [[b], [a, c], [d]]}, headers=admin.headers)
    assert r.status_code == 200 and r.json()["is_gold"] and r.json()["gold_ranking"] == [[b], [a, c], [d]]
    gold = client.get(f"/api/v1/prompt-sets/{set_id}/prompts?gold=true", headers=admin.headers).json()
    assert [p["id"] for p in gold] == [prompt_id]
    r = client.delete(url, headers=admin.headers)
    assert r.status_code == 200 and r.json()["is_gold"] is False and r.json()["gold_ranking"] is None
    with database.session() as db:
        actions = list(db.scalars(select(AuditLog.action).where(AuditLog.target_type == "prompt")))
    assert actions == ["prompt.gold_set", "prompt.gold_clear"]
    assert client.put("/api/v1/prompts/99999/gold", json={"ranking": [[1], [2]]}, headers=admin.headers).status_code == 404


def test_cookie_writes_need_the_csrf_header(client, admin) -> None:
    from tests.conftest import login

    csrf = login(client, "admin")
    assert client.post("/api/v1/prompt-sets", json={"name": "c"}).status_code == 403
    r = client.post("/api/v1/prompt-sets", json={"name": "c"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201

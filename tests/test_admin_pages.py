"""Admin pages and routes: who may use them, CSRF on every form, and the form flows
(prompt sets, uploads, gold, people, requeue, rounds, deploy, audit) through the real app."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute
from sqlalchemy import select

from app.deps import api_admin, page_admin
from app.models import AuditLog, Completion, Policy, Prompt, PromptSet, Ranking, TrainingRun, User
from app.services.tokens import resolve_token
from tests.admin_helpers import add_ranking
from tests.conftest import login
from tests.factories import make_policy, ready_set


def _depends_on(dependant, target) -> bool:  # type: ignore[no-untyped-def]
    return any(d.call is target or _depends_on(d, target) for d in dependant.dependencies)


def _flat(routes, prefix: str = ""):  # type: ignore[no-untyped-def]
    """(full path, APIRoute) for every route, through included routers (FastAPI >= 0.160 keeps
    them as included-router objects; older versions copy the routes with their prefix)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path_format, route
        elif hasattr(route, "original_router"):
            yield from _flat(route.original_router.routes, route.include_context.prefix + route.original_router.prefix)


def _routes(app, target):  # type: ignore[no-untyped-def]
    for full, route in _flat(app.routes):
        if _depends_on(route.dependant, target):
            for method in sorted(route.methods - {"HEAD"}):
                path = re.sub(r"\{[^}]+\}", "1", full.replace("{kind}.{fmt}", "comparisons.jsonl"))
                yield method, path


def test_every_admin_route_refuses_labelers_and_anonymous_users(app, client, admin, labeler) -> None:
    api = list(_routes(app, api_admin))
    pages = list(_routes(app, page_admin))
    mine = {
        ("POST", "/api/v1/prompt-sets"), ("PATCH", "/api/v1/prompt-sets/1"), ("POST", "/api/v1/prompt-sets/1/prompts"),
        ("GET", "/api/v1/stats"), ("POST", "/api/v1/users/1/requeue"), ("GET", "/api/v1/exports/comparisons.jsonl"),
        ("PUT", "/api/v1/prompts/1/gold"), ("GET", "/api/v1/audit"),
    }
    assert mine <= set(api)
    assert {("GET", "/admin"), ("GET", "/admin/people"), ("POST", "/admin/runs"), ("GET", "/admin/audit")} <= set(pages)
    for method, path in api:
        r = client.request(method, path, headers=labeler.headers)
        assert r.status_code == 403, (method, path, r.status_code)
        r = client.request(method, path)
        assert r.status_code == 401, (method, path, r.status_code)
    for method, path in pages:
        r = client.request(method, path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), (method, path)
        r = client.request(method, path, headers={**labeler.headers, "Accept": "text/html"}, follow_redirects=False)
        assert r.status_code == 403, (method, path, r.status_code)
    # A logged-in labeler (cookie) gets 403 pages too.
    login(client, "alice")
    assert client.get("/admin/quality", headers={"Accept": "text/html"}).status_code == 403


def test_every_admin_form_post_needs_the_csrf_token(app, client, admin, database) -> None:
    with database.session() as db:
        ready_set(db, "s", n_prompts=1)
    login(client, "admin")
    for method, path in _routes(app, page_admin):
        if method != "POST":
            continue
        r = client.post(path, data={"action": "save"}, follow_redirects=False)
        assert r.status_code == 403 and "CSRF" in r.text, path
        r = client.post(path, data={"action": "save", "csrf_token": "forged"}, follow_redirects=False)
        assert r.status_code == 403, path


def test_admin_pages_render(client, admin, database) -> None:
    with database.session() as db:
        ps, prompts, _ = ready_set(db, "render <b>me</b>", n_prompts=2)
        run = TrainingRun(prompt_set_ids=[ps.id])
        db.add(run)
        db.flush()
        ids = (ps.id, prompts[0].id, run.id)
    login(client, "admin")
    for url in ("/admin", "/admin/prompt-sets", f"/admin/prompt-sets/{ids[0]}", f"/admin/prompts/{ids[1]}",
                "/admin/people", "/admin/quality", f"/admin/quality?prompt_set_id={ids[0]}", "/admin/runs",
                f"/admin/runs/{ids[2]}", "/admin/policies", "/admin/audit"):
        r = client.get(url)
        assert r.status_code == 200, url
        assert "<b>me</b>" not in r.text, url  # the set's name is escaped everywhere
    assert "render &lt;b&gt;me&lt;/b&gt;" in client.get(f"/admin/prompt-sets/{ids[0]}").text
    assert client.get("/admin/prompt-sets/999", headers={"Accept": "text/html"}).status_code == 404


def test_prompt_set_forms_create_edit_upload(client, admin, database, settings) -> None:
    csrf = login(client, "admin")
    r = client.post("/admin/prompt-sets", data={
        "csrf_token": csrf, "action": "create", "name": "formset", "k": "3", "overlap": "2",
        "demonstration_share": "0.5", "temperature": "0.9", "top_p": "0.8", "max_new_tokens": "64",
        "guidelines": "Be *nice*", "status": "active",
    }, follow_redirects=False)
    assert r.status_code == 303, r.text
    url = r.headers["location"].split("?")[0]
    with database.session() as db:
        ps = db.scalar(select(PromptSet).where(PromptSet.name == "formset"))
        assert (ps.k, ps.overlap, ps.demonstration_share) == (3, 2, 0.5)
        assert ps.sampling == {"temperature": 0.9, "top_p": 0.8, "max_new_tokens": 64}
    r = client.post("/admin/prompt-sets", data={"csrf_token": csrf, "name": "formset", "k": "12"})
    assert r.status_code == 422 and "k must be from 2 to 9" in r.text
    r = client.post(url, data={"csrf_token": csrf, "action": "save", "name": "formset", "k": "5", "overlap": "1",
                               "status": "paused", "guidelines": "new"})
    assert r.status_code == 200 and "Saved." in r.text and "it serves no labeling tasks" in r.text
    good = b'{"prompt": "one"}\n{"prompt": "two", "split": "validation"}\n{"prompt": "one"}\n'
    r = client.post(url, data={"csrf_token": csrf, "action": "import"}, files={"file": ("p.jsonl", good, "application/json")})
    assert r.status_code == 200 and "Imported 2 prompt(s) from p.jsonl; skipped 1 duplicate(s)" in r.text
    bad = b"prompt,split\nok,train\nalso ok,\nbad,nowhere\n"
    r = client.post(url, data={"csrf_token": csrf, "action": "import"}, files={"file": ("p.csv", bad, "text/csv")})
    assert r.status_code == 422 and "Nothing was imported" in r.text
    assert re.search(r"<td>4</td><td>&#34;split&#34; must be|<td>4</td><td>\"split\" must be|<td>4</td>", r.text)
    settings.max_upload_bytes = 100
    r = client.post(url, data={"csrf_token": csrf, "action": "import"}, files={"file": ("p.jsonl", good * 10, "application/json")})
    assert r.status_code == 413 and "limit" in r.text
    with database.session() as db:
        assert sorted(db.scalars(select(Prompt.text))) == ["one", "two"]
        actions = list(db.scalars(select(AuditLog.action).order_by(AuditLog.id)))
    assert actions == ["prompt_set.create", "prompt_set.update", "prompts.import"]


def test_gold_form(client, admin, database) -> None:
    with database.session() as db:
        _, prompts, _ = ready_set(db, "g", n_prompts=1, k=4)
        a, b, c, d = db.scalars(select(Completion.id).where(Completion.prompt_id == prompts[0].id).order_by(Completion.id))
        prompt_id = prompts[0].id
    csrf = login(client, "admin")
    url = f"/admin/prompts/{prompt_id}"
    r = client.post(url, data={"csrf_token": csrf, "action": "set_gold", f"rank_{a}": "2", f"rank_{b}": "1",
                               f"rank_{c}": "2", f"rank_{d}": "3"})
    assert r.status_code == 200 and "Gold ranking saved." in r.text
    with database.session() as db:
        assert db.get(Prompt, prompt_id).gold_ranking == [[b], [a, c], [d]]
    r = client.post(url, data={"csrf_token": csrf, "action": "set_gold", f"rank_{a}": "1", f"rank_{b}": "2"})
    assert r.status_code == 422 and "exactly K=4" in r.text
    r = client.post(url, data={"csrf_token": csrf, "action": "clear_gold"})
    assert r.status_code == 200
    with database.session() as db:
        assert db.get(Prompt, prompt_id).is_gold is False


def test_people_forms(client, admin, labeler, database) -> None:
    csrf = login(client, "admin")
    r = client.post("/admin/people", data={"csrf_token": csrf, "action": "create_user", "username": "dave",
                                           "password": "long-enough-pw", "role": "labeler"})
    assert r.status_code == 200 and "Created labeler dave." in r.text
    with database.session() as db:
        dave = db.scalar(select(User).where(User.username == "dave")).id
    r = client.post("/admin/people", data={"csrf_token": csrf, "action": "create_user", "username": "dave",
                                           "password": "long-enough-pw"})
    assert r.status_code == 409 and "already exists" in r.text
    assert "is now admin" in client.post("/admin/people", data={"csrf_token": csrf, "action": "set_role", "user_id": dave, "role": "admin"}).text
    assert "is disabled" in client.post("/admin/people", data={"csrf_token": csrf, "action": "disable", "user_id": dave}).text
    assert "enabled again" in client.post("/admin/people", data={"csrf_token": csrf, "action": "enable", "user_id": dave}).text
    r = client.post("/admin/people", data={"csrf_token": csrf, "action": "reset_password", "user_id": dave, "password": "short"})
    assert r.status_code == 422 and "at least 8" in r.text
    assert "new password" in client.post("/admin/people", data={"csrf_token": csrf, "action": "reset_password", "user_id": dave, "password": "another-long-pw"}).text
    r = client.post("/admin/people", data={"csrf_token": csrf, "action": "create_token", "user_id": dave, "name": "ci"})
    token = re.search(r'<code class="secret">(rlhf_[^<]+)</code>', r.text).group(1)
    with database.session() as db:
        assert resolve_token(db, token).username == "dave"
        token_id = db.scalar(select(AuditLog.target_id).where(AuditLog.action == "token.create"))
    assert token not in client.get("/admin/people").text  # shown once
    assert "Revoked token" in client.post("/admin/people", data={"csrf_token": csrf, "action": "revoke_token", "token_id": token_id}).text
    with database.session() as db:
        assert resolve_token(db, token) is None
    r = client.post("/admin/people", data={"csrf_token": csrf, "action": "disable", "user_id": admin.id})
    assert r.status_code == 422 and "cannot disable yourself" in r.text
    with database.session() as db:
        actions = list(db.scalars(select(AuditLog.action).order_by(AuditLog.id)))
    assert actions == ["user.create", "user.update", "user.update", "user.update", "user.update", "token.create", "token.revoke"]


def test_requeue_from_the_quality_page(client, admin, labeler, database) -> None:
    with database.session() as db:
        ps, prompts, _ = ready_set(db, "q", n_prompts=2, k=2)
        for p in prompts:
            a, b = db.scalars(select(Completion.id).where(Completion.prompt_id == p.id))
            add_ranking(db, p, labeler.id, [[a], [b]])
        set_id = ps.id
    csrf = login(client, "admin")
    page = client.get(f"/admin/quality?prompt_set_id={set_id}").text
    assert 'data-user="alice"' in page
    r = client.post(f"/admin/quality?prompt_set_id={set_id}",
                    data={"csrf_token": csrf, "action": "requeue", "user_id": labeler.id, "prompt_set_id": set_id})
    assert r.status_code == 200 and "Requeued 2 ranking(s)" in r.text
    with database.session() as db:
        assert set(db.scalars(select(Ranking.status))) == {"requeued"}


def test_start_round_cancel_and_deploy_from_the_dashboard(client, admin, database) -> None:
    with database.session() as db:
        ps, _, v0 = ready_set(db, "r", n_prompts=1)
        v1 = make_policy(db, deployed=False, parent_id=v0.id, artifact_path="policies/v1")
        set_id, v1_id = ps.id, v1.id
    csrf = login(client, "admin")
    r = client.post("/admin/runs", data={"csrf_token": csrf, "prompt_set_ids": [str(set_id)], "stages": ["rm", "ppo"],
                                         "deploy": "on", "config": '{"ppo_iterations": 4}'}, follow_redirects=False)
    assert r.status_code == 303
    run_url = r.headers["location"]
    with database.session() as db:
        run = db.scalar(select(TrainingRun))
        assert (run.prompt_set_ids, run.stages, run.deploy, run.config) == ([set_id], ["rm", "ppo"], True, {"ppo_iterations": 4})
        assert db.scalar(select(AuditLog.action).where(AuditLog.target_type == "training_run")) == "training.round_create"
    # Same answer through the API the page polls.
    api = client.get(f"/api/v1/training/runs/{run.id}").json()
    assert api["status"] == "queued" and api["stages"] == ["rm", "ppo"]
    r = client.post("/admin/runs", data={"csrf_token": csrf, "prompt_set_ids": [str(set_id)], "config": "{oops"})
    assert r.status_code == 422 and "config is not valid JSON" in r.text
    r = client.post("/admin/runs", data={"csrf_token": csrf, "stages": ["sft"]})
    assert r.status_code == 422 and "at least one prompt set" in r.text
    r = client.post(run_url, data={"csrf_token": csrf, "action": "cancel"})
    assert r.status_code == 200 and "cancelled" in r.text
    r = client.post("/admin/policies", data={"csrf_token": csrf, "action": "deploy", "policy_id": v1_id})
    assert r.status_code == 200 and "v1 is deployed" in r.text
    with database.session() as db:
        assert db.scalar(select(Policy.version).where(Policy.deployed.is_(True))) == 1
    audit_page = client.get("/admin/audit").text
    for action in ("training.round_create", "training.run_cancel", "policy.deploy"):
        assert f"<code>{action}</code>" in audit_page
    filtered = client.get("/admin/audit?action=policy.").text
    assert "<code>policy.deploy</code>" in filtered and "<code>training.run_cancel</code>" not in filtered


@pytest.mark.parametrize("path", ["/admin/audit?before_id=abc", "/admin/prompt-sets/1?page=x"])
def test_bad_query_parameters_do_not_break_pages(client, admin, database, path) -> None:
    with database.session() as db:
        ready_set(db, "p", n_prompts=1)
    login(client, "admin")
    assert client.get(path).status_code == 200

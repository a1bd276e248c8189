"""Evaluation pages: the compare page shell is blind; the admin pages render, check the role
and CSRF, and create evaluations."""

from __future__ import annotations

import re

from sqlalchemy import select

from app.models import Evaluation, Policy
from tests.conftest import login
from tests.eval_helpers import eval_setup


def test_compare_page_names_no_policy(client, admin, labeler, database) -> None:  # type: ignore[no-untyped-def]
    with database.session() as db:
        setup = eval_setup(db, n_prompts=2)
        versions = [db.get(Policy, p).version for p in setup.policy_ids]
        paths = [db.get(Policy, p).artifact_path for p in setup.policy_ids]
    r = client.post(
        "/api/v1/evaluations",
        json={"name": "v1 vs v0 (secret)", "policy_ids": setup.policy_ids, "prompt_set_ids": [setup.prompt_set_id]},
        headers=admin.headers,
    )
    ev_id = r.json()["id"]
    login(client, labeler.username)
    page = client.get(f"/label/evaluations/{ev_id}/compare")
    assert page.status_code == 200
    html = page.text
    assert "secret" not in html and "policy" not in html.lower()
    for v, path in zip(versions, paths, strict=True):
        assert not re.search(rf"\bv{v}\b", html) and path not in html
    assert '"mode": "compare"' in html
    listing = client.get("/label/evaluations")
    assert f"/label/evaluations/{ev_id}/compare" in listing.text and "secret" not in listing.text
    assert client.get("/admin/evaluations").status_code == 403


def test_admin_creates_an_evaluation_and_sees_the_leaderboard(client, admin, database) -> None:  # type: ignore[no-untyped-def]
    with database.session() as db:
        setup = eval_setup(db, n_prompts=3)
    csrf = login(client, admin.username)
    page = client.get("/admin/evaluations")
    assert page.status_code == 200 and "New evaluation" in page.text
    form = {"action": "create", "name": "first", "split": "validation", "per_pair": "1", "overlap": "1",
            "policy_ids": [str(p) for p in setup.policy_ids], "prompt_set_ids": [str(setup.prompt_set_id)]}
    assert client.post("/admin/evaluations", data=form, follow_redirects=False).status_code == 403  # no CSRF
    r = client.post("/admin/evaluations", data={**form, "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303, r.text
    detail = client.get(r.headers["location"])
    assert detail.status_code == 200 and 'id="leaderboard"' in detail.text
    bad = client.post("/admin/evaluations", data={**form, "name": "second", "policy_ids": [str(setup.policy_ids[0])], "csrf_token": csrf})
    assert bad.status_code == 422 and "at least two" in bad.text
    with database.session() as db:
        ev = db.scalar(select(Evaluation).where(Evaluation.name == "first"))
        assert ev.status == "active"
    paused = client.post(f"/admin/evaluations/{ev.id}", data={"action": "status", "status": "paused", "csrf_token": csrf})
    assert paused.status_code == 200 and "paused" in paused.text

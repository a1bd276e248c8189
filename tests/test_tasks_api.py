"""Task assignment through the API: shape, overlap, leases, demonstrations, gold, skips."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update

from app.models import Completion, Policy, Prompt, PromptSet, Task
from app.models.base import utcnow
from tests.conftest import login
from tests.factories import make_completions, make_policy, make_prompt_set, make_prompts, ready_set

TASK_KEYS = {
    "id",
    "kind",
    "status",
    "prompt_set_id",
    "prompt_id",
    "prompt",
    "messages",
    "conversation",
    "completions",
    "lease_expires_at",
    "created_at",
    "server_time",
    "previous",
}


def _next(client, account, set_id: int, kind: str = "rank"):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/tasks/next", json={"prompt_set_id": set_id, "kind": kind}, headers=account.headers)


def _expire(database, task_id: int) -> None:
    with database.session() as db:
        db.execute(update(Task).where(Task.id == task_id).values(lease_expires_at=utcnow() - timedelta(minutes=1)))


def _rank_all(client, account, task: dict):  # type: ignore[no-untyped-def]
    body = {"ranking": [[c["id"]] for c in task["completions"]]}
    return client.post(f"/api/v1/tasks/{task['id']}/ranking", json=body, headers=account.headers)


def test_next_returns_the_contract_shape_and_the_same_task_while_the_lease_lives(
    client, database, labeler, settings
) -> None:
    with database.session() as db:
        ps, prompts, _ = ready_set(db, "shape", n_prompts=3, k=4)
        set_id = ps.id
        texts = {c.id: c.text for c in db.scalars(select(Completion))}
    before = utcnow()
    r = _next(client, labeler, set_id)
    assert r.status_code == 200, r.text
    task = r.json()
    assert set(task) == TASK_KEYS
    assert task["kind"] == "rank" and task["status"] == "leased" and task["prompt_set_id"] == set_id
    assert task["prompt"].startswith("Prompt number") and task["messages"] is None
    assert len(task["completions"]) == 4
    assert all(texts[c["id"]] == c["text"] for c in task["completions"])
    lease = task["lease_expires_at"]
    from datetime import datetime

    expires = datetime.fromisoformat(lease)
    assert timedelta(minutes=29) < expires - before <= timedelta(minutes=settings.lease_minutes, seconds=5)
    again = _next(client, labeler, set_id).json()
    assert again["id"] == task["id"] and again["completions"] == task["completions"]
    assert again["lease_expires_at"] == task["lease_expires_at"]
    with database.session() as db:
        stored = db.get(Task, task["id"])
        assert stored.completion_ids == [c["id"] for c in task["completions"]]
        assert db.scalar(select(func.count(Task.id))) == 1
    # GET shows it to its owner only
    assert client.get(f"/api/v1/tasks/{task['id']}", headers=labeler.headers).json()["id"] == task["id"]


def test_overlap_fills_started_prompts_and_never_repeats_a_prompt_for_a_labeler(
    client, database, make_account
) -> None:
    with database.session() as db:
        ps, prompts, _ = ready_set(db, "overlap", n_prompts=2, k=2, overlap=2)
        set_id = ps.id
    a, b, c, d, e = (make_account() for _ in range(5))
    ta, tb, tc, td = (_next(client, x, set_id).json() for x in (a, b, c, d))
    assert ta["prompt_id"] == tb["prompt_id"]  # started prompts fill first
    assert tc["prompt_id"] == td["prompt_id"] != ta["prompt_id"]
    # the two labelers on one prompt see the same completions (each in its own order)
    assert {x["id"] for x in ta["completions"]} == {x["id"] for x in tb["completions"]}
    assert _next(client, e, set_id).status_code == 204  # 2 prompts x overlap 2, all leased
    assert _rank_all(client, a, ta).status_code == 201
    assert _next(client, a, set_id).status_code == 204  # the other prompt is full too
    with database.session() as db:
        per_prompt = dict(db.execute(select(Task.prompt_id, func.count(Task.id)).group_by(Task.prompt_id)).all())
    assert sorted(per_prompt.values()) == [2, 2]


def test_expired_lease_frees_its_slot_and_the_old_holder_gets_409(client, database, make_account) -> None:
    with database.session() as db:
        ps, _, _ = ready_set(db, "expiry", n_prompts=1, k=2, overlap=1)
        set_id = ps.id
    a, b = make_account(), make_account()
    ta = _next(client, a, set_id).json()
    assert _next(client, b, set_id).status_code == 204
    _expire(database, ta["id"])
    tb = _next(client, b, set_id).json()
    assert tb["prompt_id"] == ta["prompt_id"] and tb["id"] != ta["id"]
    r = _rank_all(client, a, ta)
    assert r.status_code == 409 and "expired" in r.json()["detail"] and "slot" in r.json()["detail"]
    r = client.post(f"/api/v1/tasks/{ta['id']}/renew", headers=a.headers)
    assert r.status_code == 409
    assert _next(client, a, set_id).status_code == 204  # the only prompt is b's now
    with database.session() as db:
        assert db.get(Task, ta["id"]).status == "expired"
    assert _rank_all(client, b, tb).status_code == 201


def test_expired_lease_whose_slot_is_still_free_can_be_submitted_and_renewed(client, database, labeler) -> None:
    with database.session() as db:
        ps, _, _ = ready_set(db, "late", n_prompts=2, k=2)
        set_id = ps.id
    t1 = _next(client, labeler, set_id).json()
    _expire(database, t1["id"])
    r = client.post(f"/api/v1/tasks/{t1['id']}/renew", headers=labeler.headers)
    assert r.status_code == 200 and r.json()["status"] == "leased"
    assert r.json()["lease_expires_at"] > t1["lease_expires_at"]
    _expire(database, t1["id"])
    # back after the lease ran out: the same task again, with a fresh lease
    again = _next(client, labeler, set_id).json()
    assert again["id"] == t1["id"] and again["lease_expires_at"] > t1["lease_expires_at"]
    _expire(database, t1["id"])
    assert _rank_all(client, labeler, t1).status_code == 201


def test_renew_extends_an_own_live_lease_only(client, database, make_account) -> None:
    with database.session() as db:
        ps, _, _ = ready_set(db, "renew", n_prompts=2, k=2)
        set_id = ps.id
        task_lease = None
    a, b = make_account(), make_account()
    ta = _next(client, a, set_id).json()
    with database.session() as db:
        db.execute(update(Task).values(lease_expires_at=utcnow() + timedelta(minutes=2)))
        task_lease = db.get(Task, ta["id"]).lease_expires_at
    r = client.post(f"/api/v1/tasks/{ta['id']}/renew", headers=a.headers)
    assert r.status_code == 200
    with database.session() as db:
        assert db.get(Task, ta["id"]).lease_expires_at > task_lease + timedelta(minutes=20)
    r = client.post(f"/api/v1/tasks/{ta['id']}/renew", headers=b.headers)
    assert r.status_code == 403 and "another labeler" in r.json()["detail"]
    assert client.post("/api/v1/tasks/999999/renew", headers=a.headers).status_code == 404
    assert _rank_all(client, a, ta).status_code == 201
    r = client.post(f"/api/v1/tasks/{ta['id']}/renew", headers=a.headers)
    assert r.status_code == 409 and "submitted" in r.json()["detail"]


def test_only_prompts_with_k_ready_completions_of_one_policy_are_served(client, database, labeler) -> None:
    with database.session() as db:
        ps = make_prompt_set(db, "k-ready", k=3)
        set_id = ps.id
        # two policies, built directly (make_policy numbers a second policy 0 again)
        old = Policy(version=7, artifact_path="policies/v7", deployed=False)
        new = Policy(version=8, artifact_path="policies/v8", deployed=True)
        db.add_all([old, new])
        db.flush()
        p_mixed, p_old, p_both = make_prompts(db, ps, ["mixed", "old only", "both"])
        make_completions(db, p_mixed, old, 2)  # 2 + 2 from two policies: not K of one
        make_completions(db, p_mixed, new, 2)
        old_ids = [c.id for c in make_completions(db, p_old, old, 3)]
        make_completions(db, p_both, old, 3)
        new_ids = [c.id for c in make_completions(db, p_both, new, 4)]
        retired = make_completions(db, p_mixed, new, 1)[0]
        retired.status = "retired"
        ids = (p_mixed.id, p_old.id, p_both.id)
    seen = {}
    for _ in range(3):
        r = _next(client, labeler, set_id)
        if r.status_code == 204:
            break
        task = r.json()
        seen[task["prompt_id"]] = sorted(c["id"] for c in task["completions"])
        client.post(f"/api/v1/tasks/{task['id']}/skip", json={}, headers=labeler.headers)
    assert ids[0] not in seen
    assert seen[ids[1]] == sorted(old_ids)  # the newest policy that has K
    assert seen[ids[2]] == sorted(new_ids[:3])  # the deployed policy preferred, its oldest K


def test_paused_and_unknown_sets(client, database, labeler) -> None:
    with database.session() as db:
        ps, _, _ = ready_set(db, "paused", n_prompts=1, k=2)
        ps.status = "paused"
        set_id = ps.id
    assert _next(client, labeler, set_id).status_code == 204
    r = _next(client, labeler, 424242)
    assert r.status_code == 404 and "424242" in r.json()["detail"]
    r = client.post("/api/v1/tasks/next", json={"prompt_set_id": set_id, "kind": "judge"}, headers=labeler.headers)
    assert r.status_code == 422 and "kind" in r.json()["message"]


def test_demonstration_tasks_need_no_completions_and_follow_overlap(client, database, make_account) -> None:
    with database.session() as db:
        ps = make_prompt_set(db, "demos", k=4, overlap=1, demonstration_share=0.5)
        make_prompts(db, ps, ["write a haiku", "explain DNS"], wants_demonstration=True)
        make_prompts(db, ps, ["rank only"])
        set_id = ps.id
    a, b, c = make_account(), make_account(), make_account()
    assert _next(client, a, set_id).status_code == 204  # no completions: nothing to rank
    ta = _next(client, a, set_id, "demonstrate").json()
    assert ta["kind"] == "demonstrate" and ta["completions"] == []
    assert _next(client, a, set_id, "demonstrate").json()["id"] == ta["id"]
    tb = _next(client, b, set_id, "demonstrate").json()
    assert {ta["prompt"], tb["prompt"]} == {"write a haiku", "explain DNS"}
    assert _next(client, c, set_id, "demonstrate").status_code == 204
    r = client.post(f"/api/v1/tasks/{ta['id']}/demonstration", json={"text": "An answer."}, headers=a.headers)
    assert r.status_code == 201
    assert _next(client, a, set_id, "demonstrate").status_code == 204


def test_skip_frees_the_slot_and_the_labeler_does_not_get_the_prompt_again(client, database, make_account) -> None:
    with database.session() as db:
        ps, _, _ = ready_set(db, "skip", n_prompts=1, k=2)
        set_id = ps.id
    a, b = make_account(), make_account()
    ta = _next(client, a, set_id).json()
    r = client.post(f"/api/v1/tasks/{ta['id']}/skip", json={"reason": "not my language"}, headers=a.headers)
    assert r.status_code == 200 and r.json() == {
        "id": ta["id"],
        "kind": "rank",
        "status": "skipped",
        "skip_reason": "not my language",
    }
    assert client.post(f"/api/v1/tasks/{ta['id']}/skip", headers=a.headers).status_code == 200  # no body, again
    assert _next(client, a, set_id).status_code == 204
    tb = _next(client, b, set_id).json()
    assert tb["prompt_id"] == ta["prompt_id"]
    assert client.post(f"/api/v1/tasks/{tb['id']}/skip", headers=a.headers).status_code == 403
    assert _rank_all(client, b, tb).status_code == 201
    r = client.post(f"/api/v1/tasks/{tb['id']}/skip", headers=b.headers)
    assert r.status_code == 409 and "already submitted" in r.json()["detail"]
    r = _rank_all(client, a, ta)
    assert r.status_code == 409 and "skipped" in r.json()["detail"]


def test_requeued_task_frees_its_slot_but_not_for_its_labeler(client, database, make_account) -> None:
    with database.session() as db:
        ps, _, _ = ready_set(db, "requeue", n_prompts=1, k=2)
        set_id = ps.id
    a, b = make_account(), make_account()
    ta = _next(client, a, set_id).json()
    assert _rank_all(client, a, ta).status_code == 201
    with database.session() as db:  # what the admin's requeue does
        db.execute(update(Task).where(Task.id == ta["id"]).values(status="requeued"))
    assert _next(client, a, set_id).status_code == 204
    assert _next(client, b, set_id).json()["prompt_id"] == ta["prompt_id"]
    assert _rank_all(client, a, ta).status_code == 409


def test_gold_prompts_are_served_at_the_gold_rate_past_overlap_once_per_labeler(
    client, database, make_account, settings
) -> None:
    with database.session() as db:
        ps, prompts, policy = ready_set(db, "gold", n_prompts=2, k=3, overlap=1)
        gold = make_prompts(db, ps, ["a gold prompt"], is_gold=True)[0]
        ids = [c.id for c in make_completions(db, gold, policy, 3)]
        gold.gold_ranking = [[ids[2]], [ids[0], ids[1]]]
        set_id, gold_id = ps.id, gold.id
    a, b = make_account(), make_account()
    settings.gold_rate = 0.0
    seen_a = set()
    ta = _next(client, a, set_id).json()
    assert ta["prompt_id"] != gold_id
    _rank_all(client, a, ta)
    settings.gold_rate = 1.0
    for account in (a, b):  # overlap 1, yet both get the gold prompt
        t = _next(client, account, set_id).json()
        assert t["prompt_id"] == gold_id and sorted(c["id"] for c in t["completions"]) == sorted(ids)
        assert _rank_all(client, account, t).status_code == 201
        seen_a.add(t["prompt_id"])
    t = _next(client, a, set_id).json()  # gold done: back to regular work
    assert t["prompt_id"] not in (gold_id, ta["prompt_id"])


def test_chat_prompts_carry_their_earlier_turns(client, database, labeler) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Name a prime."},
    ]
    with database.session() as db:
        ps = make_prompt_set(db, "chat", k=2)
        prompt = Prompt(prompt_set_id=ps.id, messages=messages, content_hash="chat-1")
        db.add(prompt)
        db.flush()
        make_completions(db, prompt, make_policy(db), 2)
        set_id = ps.id
    task = _next(client, labeler, set_id).json()
    assert task["prompt"] == "Name a prime." and task["messages"] == messages


def test_progress_counts_own_work_and_what_is_left(client, database, make_account) -> None:
    with database.session() as db:
        ps, prompts, _ = ready_set(db, "progress", n_prompts=3, k=2, overlap=1)
        make_prompts(db, ps, ["no completions yet"])
        make_prompts(db, ps, ["demo please"], wants_demonstration=True)
        set_id = ps.id
    a, b = make_account(), make_account()
    ta = _next(client, a, set_id).json()
    _rank_all(client, a, ta)
    tb = _next(client, b, set_id).json()
    p = client.get("/api/v1/tasks/progress", params={"prompt_set_id": set_id}, headers=a.headers).json()
    assert p["ranked"] == 1 and p["holding"] == 0 and p["skipped"] == 0
    assert p["rank_left"] == 1  # 3 prompts: one done by a, one leased to b
    assert p["waiting_for_completions"] == 2  # both prompts without completions
    assert p["demonstrate_left"] == 1 and p["offers_demonstrations"] is True
    assert p["next_lease_expiry"] == tb["lease_expires_at"]
    # b does not see a's work in its own numbers
    pb = client.get("/api/v1/tasks/progress", params={"prompt_set_id": set_id}, headers=b.headers).json()
    assert pb["ranked"] == 0 and pb["holding"] == 1 and pb["rank_left"] == 1


def test_auth_is_required_and_cookie_writes_need_csrf(client, database, labeler) -> None:
    with database.session() as db:
        ps, _, _ = ready_set(db, "auth", n_prompts=1, k=2)
        set_id = ps.id
    body = {"prompt_set_id": set_id, "kind": "rank"}
    assert client.post("/api/v1/tasks/next", json=body).status_code == 401
    csrf = login(client, labeler.username)
    assert client.post("/api/v1/tasks/next", json=body).status_code == 403
    r = client.post("/api/v1/tasks/next", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200
    with database.session() as db:
        assert db.scalar(select(PromptSet.id).where(PromptSet.id == set_id)) == set_id


def test_label_pages_need_login_and_name_unknown_sets(client, database, labeler) -> None:
    with database.session() as db:
        ps, _, _ = ready_set(db, "pages", n_prompts=1, k=2)
        set_id = ps.id
    r = client.get(f"/label/{set_id}/rank", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    login(client, labeler.username)
    page = client.get("/label")
    assert page.status_code == 200 and "pages" in page.text and f"/label/{set_id}/rank" in page.text
    rank = client.get(f"/label/{set_id}/rank")
    assert rank.status_code == 200 and 'id="label-config"' in rank.text and "/static/label.js" in rank.text
    assert client.get(f"/label/{set_id}/demonstrate").status_code == 200
    missing = client.get("/label/31337/rank", headers={"Accept": "text/html"})
    assert missing.status_code == 404 and "prompt set 31337 not found" in missing.text

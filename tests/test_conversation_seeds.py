"""Seeds written by labelers (``POST /api/v1/prompt-sets/{id}/seeds``): a labeler opens a
conversation; it becomes a tree's root like an imported seed, with its author, and the
sampler's replies hang under it. Idempotent for the same labeler and text; every bad input
is a clear 4xx. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import func, select

from app.models import AuditLog, ConversationNode, Prompt
from tests.conversation_helpers import create_conversation_set, deploy_chat_policy, sample_replies


def _seed(client, account, set_id: int, text: str, **headers):  # type: ignore[no-untyped-def]
    return client.post(
        f"/api/v1/prompt-sets/{set_id}/seeds", json={"text": text}, headers={**account.headers, **headers}
    )


def _set(client, database, admin, **settings):  # type: ignore[no-untyped-def]
    deploy_chat_policy(database, client.app.state.settings.resolved_artifacts_dir)
    return create_conversation_set(client, admin, **settings)


def test_a_labeler_writes_a_seed_that_becomes_a_tree_root(client, database, admin, labeler, make_account) -> None:
    ps = _set(client, database, admin)
    r = _seed(client, labeler, ps["id"], "  How do I brew green tea?\r\nI have a kettle.  ")
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["content"] == "How do I brew green tea?\nI have a kettle."
    assert out["tree_id"] == out["node_id"] and out["author_id"] == labeler.id and out["created"] is True
    assert out["prompt_set_id"] == ps["id"]
    with database.session() as db:
        node = db.get(ConversationNode, out["node_id"])
        assert node.role == "user" and node.source == "seed" and node.parent_id is None and node.root_id is None
        assert node.depth == 0 and node.turn == 1 and node.context_chars == len(out["content"])
        assert node.prompt_id == out["prompt_id"] and node.author_id == labeler.id
        prompt = db.get(Prompt, out["prompt_id"])
        assert prompt.display_text == out["content"] and prompt.prompt_set_id == ps["id"]
        assert db.scalar(select(func.count(ConversationNode.id)).where(ConversationNode.parent_id.is_(None))) == 2
        audit = db.scalars(select(AuditLog).where(AuditLog.action == "prompts.import").order_by(AuditLog.id)).all()
        assert audit[-1].actor_id == labeler.id

    # the sampler's replies hang under it, and another labeler ranks them in its context
    ids = sample_replies(database, out["prompt_id"], ["Use water at 80 °C.", "Boil it hard."])
    ranker = make_account("labeler", "ranker")
    r = client.post("/api/v1/tasks/next", json={"prompt_set_id": ps["id"], "kind": "rank"}, headers=ranker.headers)
    assert r.status_code == 200, r.text  # the imported seed has no replies yet: this is the written one
    mine = r.json()
    assert mine["prompt_id"] == out["prompt_id"]
    assert {c["id"] for c in mine["completions"]} == set(ids)
    assert mine["messages"] == [{"role": "user", "content": out["content"]}]
    assert mine["conversation"]["tree_id"] == out["tree_id"]

    # admins may start conversations too
    r = _seed(client, admin, ps["id"], "Which teas have the least caffeine?")
    assert r.status_code == 201 and r.json()["author_id"] == admin.id


def test_the_same_seed_again_is_answered_with_the_stored_one(client, database, admin, labeler, make_account) -> None:
    ps = _set(client, database, admin)
    first = _seed(client, labeler, ps["id"], "Plan a week in Japan.")
    assert first.status_code == 201
    again = _seed(client, labeler, ps["id"], "Plan a week in Japan.\n")
    assert again.status_code == 200, again.text
    assert {k: v for k, v in again.json().items() if k != "created"} == {
        k: v for k, v in first.json().items() if k != "created"
    }
    assert again.json()["created"] is False
    # someone else's seed, or an imported one, with the same text: 409, nothing added
    other = make_account("labeler", "bob")
    r = _seed(client, other, ps["id"], "Plan a week in Japan.")
    assert r.status_code == 409 and "already" in r.json()["detail"]
    r = _seed(client, labeler, ps["id"], "Tell me about tea.")  # create_conversation_set imported it
    assert r.status_code == 409 and "already" in r.json()["detail"]
    with database.session() as db:
        assert db.scalar(select(func.count(ConversationNode.id))) == 2
        assert db.scalar(select(func.count(Prompt.id))) == 2


def test_bad_seeds_are_refused_with_a_clear_4xx(client, database, admin, labeler) -> None:
    ps = _set(client, database, admin, max_context_chars=200)
    set_id = ps["id"]
    for text in ("", "   \n\t "):
        r = _seed(client, labeler, set_id, text)
        assert r.status_code == 422 and "empty" in r.json()["detail"], r.text
    r = _seed(client, labeler, set_id, "tea\x00time")
    assert r.status_code == 422 and "NUL" in r.json()["detail"]
    r = _seed(client, labeler, set_id, "x" * 201)
    assert r.status_code == 422 and "at most 200" in r.json()["detail"]
    assert _seed(client, labeler, set_id, "x" * 200).status_code == 201
    r = client.post(f"/api/v1/prompt-sets/{set_id}/seeds", json={"text": "hi", "role": "system"}, headers=labeler.headers)
    assert r.status_code == 422
    r = client.post(f"/api/v1/prompt-sets/{set_id}/seeds", json={}, headers=labeler.headers)
    assert r.status_code == 422

    plain = client.post("/api/v1/prompt-sets", json={"name": "plain"}, headers=admin.headers).json()
    r = _seed(client, labeler, plain["id"], "Hello there")
    assert r.status_code == 422 and "not a conversation set" in r.json()["detail"]
    assert _seed(client, labeler, 99999, "Hello there").status_code == 404

    for status in ("paused", "archived"):
        r = client.patch(f"/api/v1/prompt-sets/{set_id}", json={"status": status}, headers=admin.headers)
        assert r.status_code == 200, r.text
        r = _seed(client, labeler, set_id, "Hello there")
        assert r.status_code == 409 and status in r.json()["detail"]

    with database.session() as db:  # only the 200-character seed (and the imported one) went in
        assert db.scalar(select(func.count(ConversationNode.id))) == 2


def test_seeds_need_a_login_and_a_csrf_token_in_a_browser_session(client, database, admin, labeler) -> None:
    from tests.conftest import login

    ps = _set(client, database, admin)
    r = client.post(f"/api/v1/prompt-sets/{ps['id']}/seeds", json={"text": "Hi"})
    assert r.status_code == 401
    r = client.post(f"/api/v1/prompt-sets/{ps['id']}/seeds", json={"text": "Hi"}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    csrf = login(client, labeler.username)
    r = client.post(f"/api/v1/prompt-sets/{ps['id']}/seeds", json={"text": "Hi"})
    assert r.status_code == 403
    r = client.post(f"/api/v1/prompt-sets/{ps['id']}/seeds", json={"text": "Hi"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201 and r.json()["author_id"] == labeler.id


def test_the_start_page_writes_a_seed_by_form_post(client, database, admin, labeler) -> None:
    from tests.conftest import login

    ps = _set(client, database, admin, max_context_chars=200)
    url = f"/label/{ps['id']}/start"
    r = client.get(url, follow_redirects=False)
    assert r.status_code in (302, 303, 307) and "/login" in r.headers["location"]
    csrf = login(client, labeler.username)
    home = client.get("/label").text
    assert f'href="{url}"' in home
    page = client.get(url)
    assert page.status_code == 200 and 'id="seed-form"' in page.text and f'value="{csrf}"' in page.text
    assert f'href="{url}"' in client.get(f"/label/{ps['id']}/continue").text

    assert client.post(url, data={"text": "Hello", "csrf_token": "wrong"}).status_code == 403
    r = client.post(url, data={"text": "   ", "csrf_token": csrf})
    assert r.status_code == 422 and "empty" in r.text and 'id="seed-form"' in r.text
    r = client.post(url, data={"text": "y" * 201, "csrf_token": csrf})
    assert r.status_code == 422 and "at most 200" in r.text and "y" * 201 in r.text  # the text is kept
    r = client.post(url, data={"text": "What <b>is</b> a good first bike?", "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303, r.text
    with database.session() as db:
        node = db.scalar(select(ConversationNode).where(ConversationNode.content == "What <b>is</b> a good first bike?"))
        assert node is not None and node.author_id == labeler.id and node.parent_id is None
    assert r.headers["location"] == f"{url}?started={node.id}"
    done = client.get(r.headers["location"])
    assert 'id="seed-started"' in done.text and "The model will answer it shortly" in done.text
    assert "What &lt;b&gt;is&lt;/b&gt; a good first bike?" in done.text
    # the same post again (a reload) lands on the same seed
    r = client.post(url, data={"text": "What <b>is</b> a good first bike?", "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"{url}?started={node.id}"
    # someone else's seed id shows no confirmation
    assert 'id="seed-started"' not in client.get(f"{url}?started=999999").text

    plain = client.post("/api/v1/prompt-sets", json={"name": "plain"}, headers=admin.headers).json()
    assert client.get(f"/label/{plain['id']}/start").status_code == 422
    client.patch(f"/api/v1/prompt-sets/{ps['id']}", json={"status": "paused"}, headers=admin.headers)
    paused = client.get(url)
    assert 'id="set-inactive"' in paused.text and 'id="seed-form"' not in paused.text
    r = client.post(url, data={"text": "Another one", "csrf_token": csrf})
    assert r.status_code == 409 and "paused" in r.text


def test_seeds_sent_at_once_never_make_duplicates(database, settings) -> None:
    """Four requests at the same moment: the same labeler twice with one text (a double click:
    one 201, one 200 with the same seed), and two other labelers with another text (one gets
    it, the other a 409). One tree per text, on SQLite and PostgreSQL."""
    import threading

    from app.db import transact
    from app.models import User
    from app.services import prompt_sets, seeds
    from app.services.errors import Conflict
    from app.services.users import create_user

    deploy_chat_policy(database, settings.resolved_artifacts_dir)
    with database.session() as db:
        ps = prompt_sets.create_prompt_set(
            db, None, name="race", k=2, kind="conversation", artifacts_dir=settings.resolved_artifacts_dir
        )
        ids = [create_user(db, f"racer{i}", "pw-123456789", "labeler").id for i in range(3)]
        db.commit()
        set_id = ps.id
    calls = [(ids[0], "Same words"), (ids[0], "Same words"), (ids[1], "Other words"), (ids[2], "Other words")]
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        user_id, text = calls[i]
        with database.sessionmaker() as db:
            user = db.get(User, user_id)
            db.commit()
            barrier.wait()
            try:
                seed = transact(db, lambda: seeds.write_seed(db, set_id, user, text=text, validation_fraction=0))
                results[i] = (seed.node.id, seed.created)
            except Conflict as exc:
                results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    same = [results[0], results[1]]
    assert all(isinstance(r, tuple) for r in same), same
    assert same[0][0] == same[1][0] and sorted(r[1] for r in same) == [False, True]  # type: ignore[index]
    other = [results[2], results[3]]
    assert sum(isinstance(r, Conflict) for r in other) == 1 and sum(isinstance(r, tuple) for r in other) == 1, other
    with database.session() as db:
        roots = db.scalars(select(ConversationNode.content).where(ConversationNode.prompt_set_id == set_id)).all()
        assert sorted(roots) == ["Other words", "Same words"]

"""A conversation set's trees as the admin reads them: GET /api/v1/prompt-sets/{id}/trees
and the dashboard's Trees page (nesting, who wrote each message, votes, paging, roles,
other kinds refused). SQLite and PostgreSQL."""

from __future__ import annotations

from app.models import Prompt
from app.services import claims, continue_tasks, submissions
from tests.conftest import login
from tests.conversation_helpers import context_prompt_ids, create_conversation_set, deploy_chat_policy, sample_replies
from tests.factories import make_prompt_set
from tests.round_helpers import make_labeler


def _text(database, prompt_id: int) -> str:  # type: ignore[no-untyped-def]
    with database.session() as db:
        return db.get(Prompt, prompt_id).text


def _grown_set(client, database, admin) -> int:  # type: ignore[no-untyped-def]
    """Two seeds; the first ranked (best: its first reply) and continued once."""
    deploy_chat_policy(database, client.app.state.settings.resolved_artifacts_dir)
    ps = create_conversation_set(client, admin, "chats", seeds=[{"prompt": "Plan a day in Lisbon."},
                                                                {"prompt": "Explain <b>tides</b>."}])
    first = next(pid for pid in context_prompt_ids(database, ps["id"]) if _text(database, pid) == "Plan a day in Lisbon.")
    best, other = sample_replies(database, first, ["Belém, then the Alfama.", "Stay in."])
    with database.session() as db:
        ranker, writer = make_labeler(db, "ranker"), make_labeler(db, "writer")
        task = claims.next_task(db, ranker, ps["id"], "rank", lease_minutes=30)
        submissions.submit_ranking(db, task.id, ranker, ranking=[[best], [other]])
        cont = claims.next_task(db, writer, ps["id"], "continue", lease_minutes=30)
        continue_tasks.submit_continuation(db, cont.id, writer, text="Where should I eat?", max_chars=1000)
        db.commit()
    return ps["id"]


def test_the_trees_api_nests_every_message_with_its_author_and_votes(client, database, admin, labeler) -> None:
    set_id = _grown_set(client, database, admin)
    r = client.get(f"/api/v1/prompt-sets/{set_id}/trees", headers=admin.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == 2 and body["offset"] == 0
    trees = {t["content"]: t for t in body["trees"]}
    assert set(trees) == {"Plan a day in Lisbon.", "Explain <b>tides</b>."}
    assert [t["id"] for t in body["trees"]] == sorted(t["id"] for t in body["trees"])  # oldest seed first
    seed = trees["Plan a day in Lisbon."]
    assert seed["role"] == "user" and seed["source"] == "seed" and seed["turn"] == 1
    replies = {c["content"]: c for c in seed["children"]}
    assert set(replies) == {"Belém, then the Alfama.", "Stay in."}
    best = replies["Belém, then the Alfama."]
    assert best["source"] == "sampled" and best["policy_version"] is not None and best["best_votes"] == 1
    assert replies["Stay in."]["best_votes"] == 0 and replies["Stay in."]["children"] == []
    (turn2,) = best["children"]
    assert (turn2["content"], turn2["source"], turn2["author"], turn2["turn"]) == ("Where should I eat?", "continuation", "writer", 2)
    assert trees["Explain <b>tides</b>."]["children"] == []
    # paging
    r = client.get(f"/api/v1/prompt-sets/{set_id}/trees?offset=1&limit=1", headers=admin.headers)
    assert [t["id"] for t in r.json()["trees"]] == [body["trees"][1]["id"]] and r.json()["total"] == 2
    assert client.get(f"/api/v1/prompt-sets/{set_id}/trees?limit=0", headers=admin.headers).status_code == 422
    # admins only; conversation sets only
    assert client.get(f"/api/v1/prompt-sets/{set_id}/trees", headers=labeler.headers).status_code == 403
    assert client.get(f"/api/v1/prompt-sets/{set_id}/trees").status_code == 401
    with database.session() as db:
        plain = make_prompt_set(db, "plain").id
        db.commit()
    r = client.get(f"/api/v1/prompt-sets/{plain}/trees", headers=admin.headers)
    assert r.status_code == 422 and "not a conversation set" in r.json()["detail"]


def test_the_trees_page_shows_the_threads_escaped(client, database, admin) -> None:
    set_id = _grown_set(client, database, admin)
    login(client, admin.username)
    page = client.get(f"/admin/prompt-sets/{set_id}")
    assert f'href="/admin/prompt-sets/{set_id}/trees"' in page.text
    r = client.get(f"/admin/prompt-sets/{set_id}/trees")
    assert r.status_code == 200
    assert "2 trees" in r.text and "Where should I eat?" in r.text and "continuation by writer" in r.text
    assert "best in 1 ranking" in r.text and "sampled by v" in r.text
    assert "Explain &lt;b&gt;tides&lt;/b&gt;." in r.text and "<b>tides</b>" not in r.text

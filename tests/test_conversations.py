"""Conversation sets end to end through the API: creation and its chat-template check,
seeds, sampled replies in the tree, ranking in context, continuing from the best reply,
the limits (each a clear 4xx), idempotent submissions, undo, and the invariants of the
tree. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from app.models import ConversationNode, Prompt, PromptSet, Task
from app.models.base import utcnow
from tests.conversation_helpers import (
    context_prompt_ids,
    create_conversation_set,
    deploy_chat_policy,
    sample_replies,
)


def _next(client, account, set_id: int, kind: str):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/tasks/next", json={"prompt_set_id": set_id, "kind": kind}, headers=account.headers)


def _rank(client, account, task: dict, best: int):  # type: ignore[no-untyped-def]
    others = [[c["id"]] for c in task["completions"] if c["id"] != best]
    r = client.post(f"/api/v1/tasks/{task['id']}/ranking", json={"ranking": [[best], *others]}, headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()


def _continue(client, account, task_id: int, text: str, **extra):  # type: ignore[no-untyped-def]
    return client.post(
        f"/api/v1/tasks/{task_id}/continuation", json={"text": text, **extra}, headers=account.headers
    )


def _ranked_seed(client, database, admin, labeler, **settings):  # type: ignore[no-untyped-def]
    """A conversation set whose seed has two sampled replies, ranked by ``labeler`` with
    the second one best. Returns (set, seed prompt id, [reply completion ids], best id)."""
    deploy_chat_policy(database, client.app.state.settings.resolved_artifacts_dir)
    ps = create_conversation_set(client, admin, **settings)
    seed = context_prompt_ids(database, ps["id"])[0]
    ids = sample_replies(database, seed, ["Tea is a drink.", "Tea is brewed from Camellia sinensis leaves."])
    task = _next(client, labeler, ps["id"], "rank").json()
    _rank(client, labeler, task, ids[1])
    return ps, seed, ids, ids[1]


def test_creating_a_conversation_set_needs_a_deployed_policy_with_a_chat_template(
    client, database, admin, settings
) -> None:
    body = {"name": "c", "kind": "conversation", "conversation": {"max_turns": 3, "branching": 1, "rankers_per_node": 2}}
    r = client.post("/api/v1/prompt-sets", json=body, headers=admin.headers)
    assert r.status_code == 409 and "deployed policy" in r.json()["detail"]
    deploy_chat_policy(database, settings.resolved_artifacts_dir, chat_template=False)
    r = client.post("/api/v1/prompt-sets", json=body, headers=admin.headers)
    assert r.status_code == 422 and "no chat template" in r.json()["detail"]
    deploy_chat_policy(database, settings.resolved_artifacts_dir)
    r = client.post("/api/v1/prompt-sets", json=body, headers=admin.headers)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["kind"] == "conversation" and out["overlap"] == 2
    assert out["conversation"] == {"max_turns": 3, "branching": 1, "max_context_chars": 16000, "red_team": False}
    bad = {**body, "name": "d", "conversation": {"branching": 0}}
    assert client.post("/api/v1/prompt-sets", json=bad, headers=admin.headers).status_code == 422
    plain = client.post("/api/v1/prompt-sets", json={"name": "plain"}, headers=admin.headers).json()
    assert plain["kind"] == "prompts" and plain["conversation"] is None
    mixed = {"name": "e", "conversation": {"max_turns": 2}}
    r = client.post("/api/v1/prompt-sets", json=mixed, headers=admin.headers)
    assert r.status_code == 422 and 'kind "conversation"' in r.json()["detail"]


def test_seeds_are_opening_user_messages_and_become_tree_roots(client, database, admin, settings) -> None:
    deploy_chat_policy(database, settings.resolved_artifacts_dir)
    ps = create_conversation_set(
        client, admin, seeds=[{"prompt": "Hi"}, {"messages": [{"role": "system", "content": "Be brief."},
                                                             {"role": "user", "content": "Why is the sky blue?"}]}],
    )
    bad = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}]
    r = client.post(f"/api/v1/prompt-sets/{ps['id']}/prompts", json={"prompts": bad}, headers=admin.headers)
    assert r.status_code == 422 and "opening user message" in r.json()["errors"][0]["message"]
    with database.session() as db:
        roots = db.scalars(select(ConversationNode).order_by(ConversationNode.id)).all()
        assert [(n.role, n.source, n.depth, n.turn, n.parent_id) for n in roots] == [("user", "seed", 0, 1, None)] * 2
        assert roots[1].content == "Why is the sky blue?"
        assert roots[1].context_chars == len("Be brief.") + len("Why is the sky blue?")


def test_rank_then_continue_from_the_best_reply_then_the_sampler_answers_the_new_context(
    client, database, admin, make_account
) -> None:
    ranker, writer = make_account(), make_account()
    ps, seed, ids, best = _ranked_seed(client, database, admin, ranker, k=2, branching=1)
    with database.session() as db:
        replies = db.scalars(select(ConversationNode).where(ConversationNode.role == "assistant")).all()
        seed_node = db.scalar(select(ConversationNode).where(ConversationNode.prompt_id == seed))
        # every sampled reply hangs under the context it was sampled for
        assert {(r.parent_id, r.source, r.completion_id) for r in replies} == {
            (seed_node.id, "sampled", c) for c in ids
        }
        assert {r.completion_id: r.best_votes for r in replies} == {ids[0]: 0, ids[1]: 1}

    # the ranker already ranked this context: the rank slot is full (overlap 1)
    assert _next(client, writer, ps["id"], "rank").status_code == 204
    r = _next(client, writer, ps["id"], "continue")
    assert r.status_code == 200, r.text
    task = r.json()
    assert task["kind"] == "continue" and task["completions"] == []
    assert task["messages"] == [
        {"role": "user", "content": "Tell me about tea."},
        {"role": "assistant", "content": "Tea is brewed from Camellia sinensis leaves."},
    ]
    conv = task["conversation"]
    assert conv["turn"] == 2 and conv["max_turns"] == 4 and conv["reply_node_id"] is not None

    r = _continue(client, writer, task["id"], "  Which kind has the most caffeine?  ")
    assert r.status_code == 201, r.text
    node = r.json()
    assert node["content"] == "Which kind has the most caffeine?" and node["turn"] == 2
    assert node["parent_id"] == conv["reply_node_id"]
    again = _continue(client, writer, task["id"], "Which kind has the most caffeine?")
    assert again.status_code == 200 and again.json()["id"] == node["id"]
    other = _continue(client, writer, task["id"], "Something else")
    assert other.status_code == 409

    with database.session() as db:
        new_context = db.get(Prompt, node["prompt_id"])
        assert new_context.messages == [*task["messages"], {"role": "user", "content": "Which kind has the most caffeine?"}]
        # the sampler's plan picks up the new context (the seed's rank slots are full)
        from app.services import policies

        pol = policies.deployed_policy(db)
        plan = policies.sampling_plan(db, db.get(PromptSet, ps["id"]), pol.id, buffer_prompts=10, limit=10)
        assert [p.id for p, missing in plan.prompts] == [new_context.id]

    sample_replies(database, node["prompt_id"], ["Black tea.", "Matcha, by weight."])
    third = make_account()
    rank_task = _next(client, third, ps["id"], "rank").json()
    assert rank_task["prompt_id"] == node["prompt_id"]
    assert [m["role"] for m in rank_task["messages"]] == ["user", "assistant", "user"]
    assert rank_task["conversation"]["turn"] == 2
    assert {c["text"] for c in rank_task["completions"]} == {"Black tea.", "Matcha, by weight."}


def test_branching_limit_is_kept_by_claims_and_by_submissions(client, database, admin, make_account) -> None:
    ranker, a, b = make_account(), make_account(), make_account()
    ps, seed, ids, best = _ranked_seed(client, database, admin, ranker, k=2, branching=1)
    task_a = _next(client, a, ps["id"], "continue").json()
    # one continuation per reply: the only best reply is taken by a's lease
    assert _next(client, b, ps["id"], "continue").status_code == 204
    assert _continue(client, a, task_a["id"], "And green tea?").status_code == 201
    assert _next(client, b, ps["id"], "continue").status_code == 204
    with database.session() as db:
        reply = db.get(ConversationNode, task_a["conversation"]["reply_node_id"])
        assert [c.role for c in db.scalars(select(ConversationNode).where(ConversationNode.parent_id == reply.id))] == [
            "user"
        ]


def test_continuing_onto_a_reply_whose_branches_are_taken_is_refused(client, database, admin, make_account) -> None:
    ranker, second, a, b = make_account(), make_account(), make_account(), make_account()
    deploy_chat_policy(database, client.app.state.settings.resolved_artifacts_dir)
    ps = create_conversation_set(client, admin, k=2, branching=1, rankers_per_node=2)
    seed = context_prompt_ids(database, ps["id"])[0]
    ids = sample_replies(database, seed, ["One.", "Two."])
    _rank(client, ranker, _next(client, ranker, ps["id"], "rank").json(), ids[0])
    _rank(client, second, _next(client, second, ps["id"], "rank").json(), ids[1])  # both replies ranked best once
    task_a = _next(client, a, ps["id"], "continue").json()
    task_b = _next(client, b, ps["id"], "continue").json()
    assert task_a["conversation"]["reply_node_id"] != task_b["conversation"]["reply_node_id"]
    # b asks to continue a's reply instead of their own: its one branch is a's
    r = _continue(client, b, task_b["id"], "Why?", reply_id=task_a["conversation"]["reply_node_id"])
    assert r.status_code == 409 and "branching limit" in r.json()["detail"]
    assert _continue(client, b, task_b["id"], "Why?").status_code == 201


def test_limits_give_clear_errors(client, database, admin, make_account) -> None:
    ranker, writer = make_account(), make_account()
    ps, seed, ids, best = _ranked_seed(client, database, admin, ranker, k=2, branching=2, max_context_chars=300)
    task = _next(client, writer, ps["id"], "continue").json()
    assert _continue(client, writer, task["id"], "   ").status_code == 422
    assert _continue(client, writer, task["id"], "a\x00b").status_code == 422
    never_best = _ranked_reply_node(database, ids[0])
    r = _continue(client, writer, task["id"], "Go on", reply_id=never_best)
    assert r.status_code == 422 and "never ranked best" in r.json()["detail"]
    r = _continue(client, writer, task["id"], "x" * 400)
    assert r.status_code == 422 and "context limit of 300" in r.json()["detail"]
    # the admin lowers the turn limit while the task is leased
    r = client.patch(f"/api/v1/prompt-sets/{ps['id']}", json={"conversation": {"max_turns": 1}}, headers=admin.headers)
    assert r.status_code == 200, r.text
    r = _continue(client, writer, task["id"], "Go on")
    assert r.status_code == 422 and "past the set's limit of 1" in r.json()["detail"]
    assert _next(client, make_account(), ps["id"], "continue").status_code == 204
    plain = client.post("/api/v1/prompt-sets", json={"name": "plain"}, headers=admin.headers).json()
    assert _next(client, writer, plain["id"], "continue").status_code == 422
    rank_task = _next(client, make_account(), ps["id"], "rank")
    assert rank_task.status_code == 204  # overlap 1: the seed was ranked


def _ranked_reply_node(database, completion_id: int) -> int:  # type: ignore[no-untyped-def]
    with database.session() as db:
        return db.scalar(select(ConversationNode.id).where(ConversationNode.completion_id == completion_id))


def test_a_written_reply_joins_the_tree_and_can_be_continued(client, database, admin, make_account) -> None:
    deploy_chat_policy(database, client.app.state.settings.resolved_artifacts_dir)
    r = client.post(
        "/api/v1/prompt-sets",
        json={"name": "demo-chats", "kind": "conversation", "demonstration_share": 1.0},
        headers=admin.headers,
    )
    ps = r.json()
    client.post(f"/api/v1/prompt-sets/{ps['id']}/prompts", json={"prompts": [{"prompt": "Plan a picnic."}]},
                headers=admin.headers)
    writer, follower = make_account(), make_account()
    task = _next(client, writer, ps["id"], "demonstrate").json()
    assert task["messages"] == [{"role": "user", "content": "Plan a picnic."}] and task["conversation"]["turn"] == 1
    r = client.post(f"/api/v1/tasks/{task['id']}/demonstration", json={"text": "Bring bread."}, headers=writer.headers)
    assert r.status_code == 201
    cont = _next(client, follower, ps["id"], "continue").json()
    assert cont["messages"][-1] == {"role": "assistant", "content": "Bring bread."}
    assert _continue(client, follower, cont["id"], "What else?").status_code == 201
    # the written reply has been continued: its undo would cut the tree
    r = client.post(f"/api/v1/tasks/{task['id']}/undo", headers=writer.headers)
    assert r.status_code == 409
    with database.session() as db:
        new_context = db.scalar(select(Prompt).where(Prompt.id == context_prompt_ids(database, ps["id"])[-1]))
        assert new_context.wants_demonstration  # the set's share applies to new contexts too


def test_undo_a_continuation_until_work_starts_on_its_replies(client, database, admin, make_account) -> None:
    ranker, writer = make_account(), make_account()
    ps, seed, ids, best = _ranked_seed(client, database, admin, ranker, k=2)
    task = _next(client, writer, ps["id"], "continue").json()
    node = _continue(client, writer, task["id"], "Is it healthy?").json()
    r = client.post(f"/api/v1/tasks/{task['id']}/undo", headers=writer.headers)
    assert r.status_code == 200, r.text
    assert r.json()["previous"]["text"] == "Is it healthy?"
    with database.session() as db:
        assert db.get(Prompt, node["prompt_id"]) is None
        assert db.get(ConversationNode, node["id"]) is None
    node = _continue(client, writer, task["id"], "Is it healthy, really?").json()
    sample_replies(database, node["prompt_id"], ["Mostly.", "Yes."])
    _next(client, make_account(), ps["id"], "rank")
    assert client.post(f"/api/v1/tasks/{task['id']}/undo", headers=writer.headers).status_code == 409


def test_undoing_the_ranking_takes_back_its_vote(client, database, admin, make_account) -> None:
    ranker, writer = make_account(), make_account()
    ps, seed, ids, best = _ranked_seed(client, database, admin, ranker, k=2)
    with database.session() as db:
        rank_id = db.scalar(select(Task.id).where(Task.kind == "rank"))
    assert client.post(f"/api/v1/tasks/{rank_id}/undo", headers=ranker.headers).status_code == 200
    assert _next(client, writer, ps["id"], "continue").status_code == 204
    with database.session() as db:
        assert db.scalar(select(ConversationNode.best_votes).where(ConversationNode.completion_id == best)) == 0


def test_a_lapsed_continue_lease_frees_the_reply_for_another_labeler(client, database, admin, make_account) -> None:
    ranker, a, b = make_account(), make_account(), make_account()
    ps, seed, ids, best = _ranked_seed(client, database, admin, ranker, k=2, branching=1)
    task_a = _next(client, a, ps["id"], "continue").json()
    assert _next(client, b, ps["id"], "continue").status_code == 204
    with database.session() as db:
        db.execute(update(Task).where(Task.id == task_a["id"]).values(lease_expires_at=utcnow() - timedelta(minutes=1)))
    task_b = _next(client, b, ps["id"], "continue").json()
    assert task_b["conversation"]["reply_node_id"] == task_a["conversation"]["reply_node_id"]
    assert _continue(client, b, task_b["id"], "Tell me more.").status_code == 201
    r = _continue(client, a, task_a["id"], "Late turn")
    assert r.status_code == 409 and "another labeler has taken its slot" in r.json()["detail"]


def test_patch_changes_the_given_conversation_settings_and_keeps_the_others(client, database, admin) -> None:
    deploy_chat_policy(database, client.app.state.settings.resolved_artifacts_dir)
    ps = create_conversation_set(client, admin, max_turns=3, branching=2, max_context_chars=5000)
    url = f"/api/v1/prompt-sets/{ps['id']}"
    r = client.patch(url, json={"conversation": {"branching": 4, "rankers_per_node": 3}}, headers=admin.headers)
    assert r.status_code == 200, r.text
    assert r.json()["overlap"] == 3
    with database.session() as db:
        stored = db.get(PromptSet, ps["id"])
        assert stored.conversation == {"max_turns": 3, "branching": 4, "max_context_chars": 5000, "red_team": False}
        assert stored.overlap == 3
    for body, message in [
        ({"conversation": {"max_turns": 0}}, "conversation.max_turns must be from 1 to 50"),
        ({"conversation": {"branching": 99}}, "conversation.branching must be from 1 to 20"),
    ]:
        r = client.patch(url, json=body, headers=admin.headers)
        assert r.status_code == 422 and message in r.json()["detail"], r.text
    r = client.patch(url, json={"conversation": {"colour": "red"}}, headers=admin.headers)
    assert r.status_code == 422
    with database.session() as db:  # nothing of a refused PATCH was written
        assert db.get(PromptSet, ps["id"]).conversation["branching"] == 4
    plain = client.post("/api/v1/prompt-sets", json={"name": "plain"}, headers=admin.headers).json()
    r = client.patch(f"/api/v1/prompt-sets/{plain['id']}", json={"conversation": {"max_turns": 2}}, headers=admin.headers)
    assert r.status_code == 422 and 'kind "conversation"' in r.json()["detail"]

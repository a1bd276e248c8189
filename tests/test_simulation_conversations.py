"""`rlhf simulate` on a conversation set (app/simulation/conversations.py).

The pure parts (follow-up turns, the preference's prompt) and one labeling pass end to end
with the tiny model: a live server, a real worker whose sampler answers every context, and
the simulator's labelers through the HTTP API on a set with max_turns=2: the seeds' replies
are ranked in context, the best ones continued, the sampler answers the new contexts and
their turn-2 rank tasks are ranked too.
"""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from app.config import Settings
from app.db import Database
from app.models import ConversationNode, Demonstration, Prompt, Ranking, Task
from app.simulation.conversations import FOLLOW_UPS, follow_up, preference_prompt
from app.simulation.loop import Simulation, SimulationConfig
from app.models.base import utcnow
from tests.conversation_helpers import check_tree
from tests.round_helpers import fast_settings
from trainer.worker import TrainerWorker

SEEDS = ["What causes the seasons on Earth?", "Why is the sky blue?", "How does a refrigerator keep food cold?"]
VALIDATION = ["What is a hash function?"]


# --- the pure parts ---------------------------------------------------------------------


def _filled(text: str) -> bool:
    for template in FOLLOW_UPS:
        head, _, tail = template.partition("{term}")
        if text == template or ("{term}" in template and text.startswith(head) and text.endswith(tail)):
            return True
    return False


def test_follow_ups_are_deterministic_per_seed_and_reply_and_come_from_the_bank() -> None:
    reply = "Refrigerators move heat outside with a compressor."
    texts = [follow_up(0, node, reply) for node in range(40)]
    assert texts == [follow_up(0, node, reply) for node in range(40)]
    assert all(_filled(t) and "{" not in t for t in texts)
    assert len(set(texts)) >= 6  # the bank is drawn from, not one template
    assert [follow_up(1, n, reply) for n in range(40)] != texts
    assert any("compressor" in t or "refrigerators" in t.lower() for t in texts)  # filled from the reply
    assert {follow_up(0, n, "Yes, it is so.") for n in range(40)} <= {t for t in FOLLOW_UPS if "{term}" not in t}


def test_the_preference_sees_the_user_turns_of_the_context() -> None:
    task = {"prompt": "Why is that?", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "Rayleigh scattering."}, {"role": "user", "content": "Why is that?"}]}
    assert preference_prompt(task) == "Why is the sky blue?\nWhy is that?"
    assert preference_prompt({"prompt": "plain", "messages": None}) == "plain"


# --- one pass end to end ------------------------------------------------------------------


@pytest.fixture
def loop_settings(settings: Settings) -> Settings:
    return fast_settings(settings, heartbeat_s=0.5, heartbeat_timeout_s=30.0, worker_poll_s=0.2, buffer_prompts=8)


@pytest.mark.usefixtures("single_torch_thread")
def test_a_pass_ranks_in_context_continues_and_ranks_the_second_turn(
    server: str, worker: TrainerWorker, database: Database, make_account
) -> None:
    admin = make_account("admin", "admin")
    with httpx.Client(base_url=f"{server}/api/v1", headers=admin.headers, timeout=30) as api:
        body = {"name": "chats", "k": 2, "overlap": 1, "kind": "conversation", "demonstration_share": 1.0,
                "sampling": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 6},
                "conversation": {"max_turns": 2, "branching": 1}}
        r = api.post("/prompt-sets", json=body)
        assert r.status_code == 201, r.text
        set_id = r.json()["id"]
        prompts = [{"prompt": p, "split": "train"} for p in SEEDS] + [{"prompt": p, "split": "validation"}
                                                                        for p in VALIDATION]
        assert api.post(f"/prompt-sets/{set_id}/prompts", json={"prompts": prompts}).status_code == 200

    cfg = SimulationConfig(url=server, token=admin.token, prompt_set="chats", labelers=2, rounds=0,
                           demonstrations=2, idle_timeout_s=120.0, poll_s=0.2)
    sim = Simulation(cfg)
    try:
        rows = sim.run()
    finally:
        sim.close()

    with database.session() as db:
        nodes = list(db.scalars(select(ConversationNode).where(ConversationNode.prompt_set_id == set_id)))
        users = [n for n in nodes if n.role == "user"]
        turn1 = {n.prompt_id for n in users if n.turn == 1}
        turn2 = [n for n in users if n.turn == 2]
        assert len(turn1) == len(SEEDS + VALIDATION)
        # every seed's best reply was continued once (branching 1) with a turn from the bank
        assert len(turn2) >= len(turn1), [n.content for n in turn2]
        assert {nodes_by.parent_id for nodes_by in turn2} <= {n.id for n in nodes if n.role == "assistant"}
        assert all(_filled(n.content) for n in turn2)
        # every context, seeds and second turns, was ranked in its context
        ranked = {db.get(Task, r.task_id).prompt_id for r in db.scalars(select(Ranking))}
        assert ranked == turn1 | {n.prompt_id for n in turn2}
        for n in turn2:
            context = db.get(Prompt, n.prompt_id)
            assert [m["role"] for m in context.messages] == ["user", "assistant", "user"]
            assert context.messages[-1]["content"] == n.content
        # demonstrations: at most the pass's quota, each written into a context's tree
        demos = list(db.scalars(select(Demonstration)))
        assert 1 <= len(demos) <= cfg.demonstrations
        written = [n for n in nodes if n.demonstration_id is not None]
        assert len(written) == len(demos)
        check_tree(db, set_id, branching=1, now=utcnow())  # the tree's invariants hold
        # nothing was left behind: no open rank tasks, no reply at turn 1 left uncontinued
        assert not [t for t in db.scalars(select(Task).where(Task.prompt_set_id == set_id)) if t.status == "leased"]

    assert rows[0].rankings == len(turn1) + len(turn2) and rows[0].demonstrations == len(demos)
    assert sim.last_pass["continuations"] == len(turn2)
    assert {c.turn for c in sim.contexts.values()} == {1, 2}
    turn2_prompt = next(c.prompt for pid, c in sim.contexts.items() if c.turn == 2)
    assert "\n" in turn2_prompt  # the preference saw the seed and the follow-up
    assert rows[0].preference_score == rows[0].preference_score  # validation replies were scored

"""A training round on a conversation set with the tiny model trains all three stages on
the conversations: SFT on the written replies in their whole context (loss on the reply's
tokens only, as for any chat prompt), the reward model on replies ranked in their context,
PPO on sampled contexts. The set is grown through the services the API calls."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.models import Completion, ConversationNode, PromptSet
from app.models.base import utcnow
from app.services import claims, continue_tasks, imports, prompt_sets, submissions
from tests.conversation_helpers import check_tree, sample_replies
from tests.round_helpers import (
    BAD,
    GOOD,
    TINY_CONFIG,
    bootstrap_v0,
    create_run,
    fast_settings,
    logs_of,
    make_labeler,
    run_state,
)
from trainer.data import load_round_data, take_snapshot
from trainer.worker import TrainerWorker

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _rank_everything(db, ranker, set_id: int) -> int:  # type: ignore[no-untyped-def]
    """Rank every open rank task: the GOOD-looking reply first, the BAD one last."""
    n = 0
    while (task := claims.next_task(db, ranker, set_id, "rank", lease_minutes=30)) is not None:
        texts = dict(db.execute(select(Completion.id, Completion.text).where(Completion.id.in_(task.completion_ids))).all())
        order = sorted(task.completion_ids, key=lambda c: (0 if texts[c].startswith(tuple(GOOD)) else 2 if texts[c] in BAD else 1))
        submissions.submit_ranking(db, task.id, ranker, ranking=[[c] for c in order])
        n += 1
    return n


def _replies(i: int) -> list[str]:
    return [f"{GOOD[i % 3]} {i}", "meh", BAD[i % 3]]


def test_a_round_on_a_conversation_set_trains_sft_rm_and_ppo_on_conversations(settings, database, tiny_base) -> None:
    s = fast_settings(settings)
    bootstrap_v0(s, database, tiny_base)
    with database.session() as db:
        ps = prompt_sets.create_prompt_set(
            db, None, name="chats", k=3, kind="conversation", demonstration_share=1.0,
            sampling={"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8},
            conversation={"max_turns": 2, "branching": 1}, artifacts_dir=s.resolved_artifacts_dir,
        )
        seeds = [{"prompt": f"Question {i}: please answer clearly.", "split": "train"} for i in range(4)]
        seeds += [{"prompt": f"Validation question {i}?", "split": "validation"} for i in range(2)]
        imports.import_rows(db, ps, imports.parse_items(seeds), validation_fraction=0)
        db.commit()
        set_id = ps.id
        seed_prompts = list(db.scalars(select(ConversationNode.prompt_id).order_by(ConversationNode.id)))
    for i, prompt_id in enumerate(seed_prompts):
        sample_replies(database, prompt_id, _replies(i))
    with database.session() as db:
        ranker, writer = make_labeler(db, "ranker"), make_labeler(db, "writer")
        assert _rank_everything(db, ranker, set_id) == 6
        second: list[int] = []
        while (task := claims.next_task(db, writer, set_id, "continue", lease_minutes=30)) is not None:
            node, _ = continue_tasks.submit_continuation(db, task.id, writer, text="Can you say more?", max_chars=500)
            second.append(node.prompt_id)
        db.commit()
    assert len(second) == 6
    for i, prompt_id in enumerate(second):
        sample_replies(database, prompt_id, _replies(i + 1))
    with database.session() as db:
        ranker = db.get(type(ranker), ranker.id)
        writer = db.get(type(writer), writer.id)
        assert _rank_everything(db, ranker, set_id) == 6
        written = 0
        while (task := claims.next_task(db, writer, set_id, "demonstrate", lease_minutes=30)) is not None:
            submissions.submit_demonstration(db, task.id, writer, text=f"{GOOD[written % 3]} reply {written}", max_chars=500)
            written += 1
        db.commit()
        assert written == 12
        check_tree(db, set_id, 1, utcnow())

        # what the round trains on: contexts of two user turns, ending before the judged reply
        snapshot = take_snapshot(db, [set_id], utcnow())
        data = load_round_data(db, snapshot)
        multi = [d for d in data.demonstrations if d.messages and len(d.messages) == 3]
        assert multi and all([m["role"] for m in d.messages] == ["user", "assistant", "user"] for d in multi)
        assert any(r.messages and len(r.messages) == 3 for r in data.rankings)
        assert any(m and len(m) == 3 for _, m in data.train_prompts)  # PPO's contexts
        assert db.get(PromptSet, set_id).kind == "conversation"

    run_id = create_run(database, [set_id], deploy=True)
    TrainerWorker(s, database).run_once()
    run = run_state(database, run_id)
    assert run.status == "succeeded", (run.error, logs_of(database, run_id))
    assert {"sft", "rm", "ppo", "eval"} <= set(run.metrics), run.metrics
    for stage in ("sft", "rm", "ppo", "eval"):  # the short contexts fit: nothing cut, and each stage says so
        assert run.metrics[stage]["context_cut_examples"] == 0 == run.metrics[stage]["context_cut_messages"], stage
    assert run.snapshot["counts"]["rankings"] == 12 and run.snapshot["counts"]["demonstrations"] == 12

    # sft_assistant_turns=all: the same demonstrations, the earlier replies of their conversations
    # trained on too (more supervised tokens), through the round config.
    config = {**TINY_CONFIG, "sft_assistant_turns": "all", "sft_demonstrations": "all"}
    every_id = create_run(database, [set_id], stages=["sft"], config=config)
    TrainerWorker(s, database).run_once()
    every = run_state(database, every_id)
    assert every.status == "succeeded", (every.error, logs_of(database, every_id))
    assert every.metrics["sft"]["assistant_turns_fallbacks"] == 0
    assert every.metrics["sft"]["epochs"] == run.metrics["sft"]["epochs"]
    assert every.metrics["sft"]["train_tokens"] > run.metrics["sft"]["train_tokens"]

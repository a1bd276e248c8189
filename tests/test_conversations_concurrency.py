"""Labelers continuing the same conversation trees at once, on SQLite and PostgreSQL.

Eight labelers claim continue tasks at the same moment, round after round, and submit a
next user turn, skip,
or abandon the lease (it lapses three simulated minutes later); in the first round all
write the same words, so the two labelers given one reply race with identical turns. Between rounds the sampler's
write path answers every new context and a ranker ranks it, so the trees grow until the
turn limit. After every round the tree invariants hold (tests/conversation_helpers.py
``check_tree``): no reply is continued past the branching limit, no duplicate nodes, every
context is a real path, every task sits on a context of the tree.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import timedelta

from sqlalchemy import func, select

from app.models import ConversationNode, Prompt, User
from app.models.base import utcnow
from app.services import claims, continue_tasks, imports, prompt_sets, submissions, tasks
from app.services.errors import Conflict
from app.services.users import create_user
from tests.conversation_helpers import check_tree, deploy_chat_policy, sample_replies

WORKERS = 8
ROUNDS = 8
BRANCHING = 2
LEASE_MINUTES = 3.0


def _answer_open_contexts(database, set_id: int, ranker_id: int, now) -> int:  # type: ignore[no-untyped-def]
    """The sampler's replies for every context without any, then the ranker ranks every open
    rank task (best: the reply sampled first). Returns how many contexts were answered."""
    bare = _contexts_without_replies(database, set_id)
    for prompt_id in bare:
        sample_replies(database, prompt_id, [f"reply a to {prompt_id}", f"reply b to {prompt_id}"])
    with database.sessionmaker() as db:
        ranker = db.get(User, ranker_id)
        while True:
            task = tasks.transact(db, lambda: claims.next_task(db, ranker, set_id, "rank", lease_minutes=30, now=now))
            if task is None:
                break
            ordered = sorted(task.completion_ids)
            tasks.transact(
                db, lambda: submissions.submit_ranking(db, task.id, ranker, ranking=[[c] for c in ordered], now=now)
            )
    return len(bare)


def _contexts_without_replies(database, set_id: int) -> list[int]:  # type: ignore[no-untyped-def]
    with database.session() as db:
        users = db.execute(
            select(ConversationNode.id, ConversationNode.prompt_id).where(
                ConversationNode.prompt_set_id == set_id, ConversationNode.role == "user"
            )
        ).all()
        parents = set(db.scalars(select(ConversationNode.parent_id).where(ConversationNode.role == "assistant")))
        return [pid for nid, pid in users if nid not in parents]


def test_labelers_continuing_the_same_trees_at_once_never_duplicate_or_overbranch(database, settings) -> None:
    deploy_chat_policy(database, settings.resolved_artifacts_dir)
    with database.session() as db:
        ps = prompt_sets.create_prompt_set(
            db, None, name="race", k=2, kind="conversation",
            conversation={"max_turns": 3, "branching": BRANCHING}, artifacts_dir=settings.resolved_artifacts_dir,
        )
        seeds = [{"prompt": f"Opening question {i}"} for i in range(2)]
        imports.import_rows(db, ps, imports.parse_items(seeds), validation_fraction=0)
        set_id = ps.id
        ranker_id = create_user(db, "ranker", "ranker-password", "labeler").id
        user_ids = [create_user(db, f"racer{i}", "racer-password", "labeler").id for i in range(WORKERS)]
    t0 = utcnow()
    _answer_open_contexts(database, set_id, ranker_id, t0)

    start = threading.Barrier(WORKERS + 1)
    end = threading.Barrier(WORKERS + 1)
    errors: list[BaseException] = []
    stats: Counter[str] = Counter()
    lock = threading.Lock()

    def worker(index: int) -> None:
        rng = random.Random(index)
        with database.sessionmaker() as db:
            user = db.get(User, user_ids[index])
            db.commit()
            for round_no in range(ROUNDS):
                start.wait()
                now = t0 + timedelta(minutes=round_no)
                try:
                    outcome = _act(db, user, set_id, round_no, index, rng, now)
                    with lock:
                        stats[outcome] += 1
                except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                    with lock:
                        errors.append(exc)
                db.commit()
                end.wait()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for round_no in range(ROUNDS):
        start.wait(timeout=120)
        end.wait(timeout=120)
        assert not errors, f"round {round_no}: {errors[0]!r}"
        now = t0 + timedelta(minutes=round_no)
        with database.session() as db:
            check_tree(db, set_id, BRANCHING, now)
        _answer_open_contexts(database, set_id, ranker_id, now)
    for t in threads:
        t.join(timeout=30)

    with database.session() as db:
        counts = check_tree(db, set_id, BRANCHING, t0 + timedelta(minutes=ROUNDS))
        turns = Counter(db.scalars(select(ConversationNode.turn).where(ConversationNode.role == "user")))
        contexts = db.scalar(select(func.count(Prompt.id)).where(Prompt.prompt_set_id == set_id))
    # every continuation made exactly one user node and one context; nothing else did
    assert counts["user"] == contexts == 2 + stats["continued"], (counts, contexts, stats)
    assert set(turns) == {1, 2, 3}, turns  # the trees grew to the turn limit and no further
    assert stats["continued"] >= 8 and stats["same_turn_refused"] >= 2, stats  # round 0: one per reply
    assert stats["empty"] > 0, stats  # the trees fill up: branching and the turn limit bound them


def _act(db, user: User, set_id: int, round_no: int, index: int, rng: random.Random, now) -> str:  # type: ignore[no-untyped-def]
    task = tasks.transact(db, lambda: claims.next_task(db, user, set_id, "continue", lease_minutes=LEASE_MINUTES, now=now))
    if task is None:
        return "empty"
    roll = rng.random() if round_no else 1.0  # round 0: everyone writes, so the identical turns race
    if roll < 0.15:
        return "abandoned"  # its lease lapses; the reply is free again for others
    if roll < 0.25:
        tasks.transact(db, lambda: submissions.skip_task(db, task.id, user, reason="race"))
        return "skipped"
    # half the labelers write the round's common words: two of them on one reply race
    text = f"Follow-up of round {round_no}?" if index % 2 == 0 or round_no == 0 else f"Follow-up {round_no}.{index}?"
    try:
        tasks.transact(
            db, lambda: continue_tasks.submit_continuation(db, task.id, user, text=text, max_chars=1000, now=now)
        )
    except Conflict as exc:
        if "same turn" in exc.message:
            tasks.transact(db, lambda: submissions.skip_task(db, task.id, user, reason="taken"))
            return "same_turn_refused"
        raise
    return "continued"

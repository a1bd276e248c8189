"""Concurrent claims: 20 labelers claim at the same moment, 50 rounds in a row.

Each worker has its own database session and goes through the same service calls the API
makes (claim in ``transact``, then submit, skip, hold, or abandon the lease, and now and
then submit an abandoned task late). Time is simulated: round r happens at t0 + r minutes
and leases last 3 minutes, so abandoned leases expire while the others keep claiming.
After every round the invariants are checked: no prompt has more than ``overlap`` tasks
that are submitted or hold a live lease, and no labeler holds two live-or-done tasks (or
two rankings) for one prompt. It runs on SQLite and on PostgreSQL (FOR UPDATE SKIP LOCKED
on the slots rows and the retry on deadlock / serialization failure), on a set of one
policy and on one with slots of two: the second policy has K completions of every other
prompt and is deployed halfway through, while labelers claim, so the rank slots of those
prompts move to it (counted per (prompt, policy) pair).
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.models import Prompt, Ranking, Task, User
from app.models.base import utcnow
from app.services import policies, submissions, tasks
from app.services.errors import Conflict
from app.services.users import create_user
from tests.factories import make_completions, make_policy, make_prompts, ready_set

WORKERS = 20
ROUNDS = 50
OVERLAP = 3
LEASE_MINUTES = 3.0


def _check_invariants(database, set_id: int, now: datetime, round_no: int) -> None:  # type: ignore[no-untyped-def]
    with database.session() as db:
        gold = set(db.scalars(select(Prompt.id).where(Prompt.is_gold.is_(True))))
        taken = db.execute(
            select(Task.prompt_id, Task.policy_id, func.count(Task.id))
            .where(Task.prompt_set_id == set_id, tasks.takes_slot(now))
            .group_by(Task.prompt_id, Task.policy_id)
        ).all()
        over = {(p, pol): n for p, pol, n in taken if n > OVERLAP and p not in gold}
        assert not over, f"round {round_no}: (prompt, policy) pairs over overlap {OVERLAP}: {over}"
        doubled = db.execute(
            select(Task.labeler_id, Task.prompt_id, Task.policy_id, func.count(Task.id))
            .where(tasks.keeps_labeler_off(now))
            .group_by(Task.labeler_id, Task.prompt_id, Task.policy_id)
            .having(func.count(Task.id) > 1)
        ).all()
        assert not doubled, f"round {round_no}: a labeler got a prompt twice: {doubled}"
        gold_doubled = db.execute(
            select(Task.labeler_id, Task.prompt_id, func.count(Task.id))
            .where(tasks.keeps_labeler_off(now), Task.prompt_id.in_(gold))
            .group_by(Task.labeler_id, Task.prompt_id)
            .having(func.count(Task.id) > 1)
        ).all()
        assert not gold_doubled, f"round {round_no}: a labeler got a gold prompt twice: {gold_doubled}"
        ranked_twice = db.execute(
            select(Ranking.labeler_id, Ranking.prompt_id, Task.policy_id, func.count(Ranking.id))
            .join(Task, Task.id == Ranking.task_id)
            .group_by(Ranking.labeler_id, Ranking.prompt_id, Task.policy_id)
            .having(func.count(Ranking.id) > 1)
        ).all()
        assert not ranked_twice, f"round {round_no}: a labeler ranked a prompt twice: {ranked_twice}"


@pytest.mark.parametrize("n_policies", [1, 2])
def test_twenty_labelers_claiming_at_once_never_overfill_a_prompt(database, n_policies: int) -> None:  # type: ignore[no-untyped-def]
    with database.session() as db:
        ps, prompts, policy = ready_set(db, "race", n_prompts=150, k=2, overlap=OVERLAP)
        for gold in make_prompts(db, ps, [f"gold {i}" for i in range(3)], is_gold=True):
            a, b = make_completions(db, gold, policy, 2)
            gold.gold_ranking = [[a.id], [b.id]]
        redeploy_to = None
        if n_policies == 2:
            second = make_policy(db, deployed=False, artifact_path="policies/v1")
            for p in prompts[::2]:
                make_completions(db, p, second, 2)
            redeploy_to = second.id
        user_ids = [create_user(db, f"racer{i}", "racer-password", "labeler").id for i in range(WORKERS)]
        set_id = ps.id

    t0 = utcnow()
    start = threading.Barrier(WORKERS + 1)
    end = threading.Barrier(WORKERS + 1)
    errors: list[BaseException] = []
    stats: Counter[str] = Counter()
    lock = threading.Lock()

    def worker(index: int) -> None:
        rng = random.Random(index)
        abandoned: set[int] = set()
        with database.sessionmaker() as db:
            user = db.get(User, user_ids[index])
            assert user is not None
            db.commit()  # hand the connection back before waiting at the barrier
            for round_no in range(ROUNDS):
                start.wait()
                now = t0 + timedelta(minutes=round_no)
                try:
                    task = tasks.transact(
                        db,
                        lambda: tasks.next_task(
                            db,
                            user,
                            set_id,
                            "rank",
                            lease_minutes=LEASE_MINUTES,
                            gold_rate=0.1,
                            now=now,
                            rng=rng,
                        ),
                    )
                    outcome = _act(db, user, task, abandoned, rng, now)
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
        if redeploy_to is not None and round_no == ROUNDS // 2:  # while the labelers claim
            with database.sessionmaker() as db:
                tasks.transact(db, lambda: policies.deploy_policy(db, None, redeploy_to))
        end.wait(timeout=120)
        assert not errors, f"round {round_no}: {errors[0]!r}"
        _check_invariants(database, set_id, t0 + timedelta(minutes=round_no), round_no)
    for t in threads:
        t.join(timeout=30)

    with database.session() as db:
        rankings = db.scalar(select(func.count(Ranking.id)))
        per_prompt = Counter(
            db.execute(
                select(Ranking.prompt_id, Task.policy_id)
                .join(Prompt, Prompt.id == Ranking.prompt_id)
                .join(Task, Task.id == Ranking.task_id)
                .where(Prompt.is_gold.is_(False))
            ).all()
        )
    assert stats["submitted"] == rankings and rankings > 300, stats
    assert max(per_prompt.values()) <= OVERLAP
    # with two policies the redeploy opens 75 more pairs, so nobody need run out
    assert (stats["empty"] > 0 or n_policies == 2) and stats["skipped"] > 0 and stats["abandoned"] > 0, stats


def _act(db, user: User, task: Task | None, abandoned: set[int], rng: random.Random, now: datetime) -> str:  # type: ignore[no-untyped-def]
    """What one simulated labeler does with the task it was given."""
    if task is None:
        if abandoned and rng.random() < 0.3:  # come back to an old, expired one
            return _submit(db, user, abandoned.pop(), now, late=True)
        return "empty"
    if task.id in abandoned:
        if task.lease_expires_at - now >= timedelta(minutes=LEASE_MINUTES):  # revived for us after expiry
            abandoned.discard(task.id)
            return _submit(db, user, task.id, now)
        return "held"
    roll = rng.random()
    if roll < 0.65:
        return _submit(db, user, task.id, now)
    if roll < 0.75:
        tasks.transact(db, lambda: submissions.skip_task(db, task.id, user, reason="race"))
        return "skipped"
    if roll < 0.9:
        abandoned.add(task.id)
        return "abandoned"
    return "held"


def _submit(db, user: User, task_id: int, now: datetime, late: bool = False) -> str:  # type: ignore[no-untyped-def]
    def work() -> None:
        task = tasks.get_task(db, task_id)
        submissions.submit_ranking(db, task_id, user, ranking=[[c] for c in task.completion_ids], now=now)

    try:
        tasks.transact(db, work)
    except Conflict:
        if late:
            return "late_rejected"
        raise
    return "submitted"


def test_transact_retries_deadlocks_and_serialization_failures_but_nothing_else(database) -> None:  # type: ignore[no-untyped-def]
    import psycopg
    from sqlalchemy.exc import IntegrityError, OperationalError

    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("SELECT 1", {}, psycopg.errors.DeadlockDetected("deadlock detected"))
        if len(calls) == 2:
            raise OperationalError("SELECT 1", {}, psycopg.errors.SerializationFailure("could not serialize"))
        return "done"

    with database.sessionmaker() as db:
        assert tasks.transact(db, flaky) == "done" and len(calls) == 3
        calls.clear()

        def broken() -> None:
            calls.append(1)
            raise IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))

        try:
            tasks.transact(db, broken)
        except IntegrityError:
            pass
        else:
            raise AssertionError("an integrity error must not be retried")
        assert len(calls) == 1

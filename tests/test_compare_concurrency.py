"""Concurrent compare claims: 20 labelers claim at the same moment, round after round.

Each worker has its own session and makes the service calls the API makes (claim in
``transact``, then judge, skip, or abandon the lease; now and then judge an abandoned task
late). Time is simulated: round r is t0 + r minutes, leases last 3 minutes. After every
round: no comparison has more than ``overlap`` tasks that are submitted or hold a live
lease, and no labeler has two live-or-done tasks (or two judgments) for one comparison.
Runs on SQLite and on PostgreSQL (FOR UPDATE SKIP LOCKED and the recount under the lock).
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import datetime, timedelta

from sqlalchemy import func, select

from app.models import CompareTask, ComparisonJudgment, Task, User
from app.models.base import utcnow
from app.services import compare_tasks, evaluations, submissions, tasks
from app.services.errors import Conflict
from app.services.users import create_user
from tests.eval_helpers import eval_setup

WORKERS = 20
ROUNDS = 25
OVERLAP = 3
LEASE_MINUTES = 3.0


def _check(database, ev_id: int, now: datetime, round_no: int) -> None:  # type: ignore[no-untyped-def]
    with database.session() as db:
        over = db.execute(
            select(CompareTask.comparison_id, func.count(Task.id))
            .join(Task, Task.id == CompareTask.task_id)
            .where(CompareTask.evaluation_id == ev_id, tasks.takes_slot(now))
            .group_by(CompareTask.comparison_id)
            .having(func.count(Task.id) > OVERLAP)
        ).all()
        assert not over, f"round {round_no}: comparisons over overlap {OVERLAP}: {over}"
        doubled = db.execute(
            select(Task.labeler_id, CompareTask.comparison_id, func.count(Task.id))
            .join(Task, Task.id == CompareTask.task_id)
            .where(tasks.keeps_labeler_off(now))
            .group_by(Task.labeler_id, CompareTask.comparison_id)
            .having(func.count(Task.id) > 1)
        ).all()
        assert not doubled, f"round {round_no}: a labeler got a comparison twice: {doubled}"
        judged_twice = db.execute(
            select(ComparisonJudgment.labeler_id, ComparisonJudgment.comparison_id, func.count(ComparisonJudgment.id))
            .group_by(ComparisonJudgment.labeler_id, ComparisonJudgment.comparison_id)
            .having(func.count(ComparisonJudgment.id) > 1)
        ).all()
        assert not judged_twice, f"round {round_no}: a labeler judged a comparison twice: {judged_twice}"


def test_twenty_labelers_claiming_compare_tasks_never_exceed_overlap(database) -> None:  # type: ignore[no-untyped-def]
    with database.session() as db:
        setup = eval_setup(db, n_prompts=12, n_policies=3)  # 36 comparisons x overlap 3 = 108 slots
        ev = evaluations.create_evaluation(
            db, None, name="race", policy_ids=setup.policy_ids, prompt_set_ids=[setup.prompt_set_id], overlap=OVERLAP
        )
        assert ev.status == "active"
        ev_id = ev.id
        user_ids = [create_user(db, f"racer{i}", "racer-password", "labeler").id for i in range(WORKERS)]

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
            db.commit()
            for round_no in range(ROUNDS):
                start.wait()
                now = t0 + timedelta(minutes=round_no)
                try:
                    task = tasks.transact(
                        db,
                        lambda: compare_tasks.next_task(
                            db, user, ev_id, lease_minutes=LEASE_MINUTES, now=now, rng=rng
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
        end.wait(timeout=120)
        assert not errors, f"round {round_no}: {errors[0]!r}"
        _check(database, ev_id, t0 + timedelta(minutes=round_no), round_no)
    for t in threads:
        t.join(timeout=30)

    with database.session() as db:
        judged = db.scalar(select(func.count(ComparisonJudgment.id)))
        per_comparison = Counter(db.scalars(select(ComparisonJudgment.comparison_id)).all())
    assert stats["submitted"] == judged and judged > 60, stats
    assert max(per_comparison.values()) <= OVERLAP
    assert stats["empty"] > 0 and stats["abandoned"] > 0, stats


def _act(db, user: User, task: Task | None, abandoned: set[int], rng: random.Random, now: datetime) -> str:  # type: ignore[no-untyped-def]
    if task is None:
        if abandoned and rng.random() < 0.3:
            return _submit(db, user, abandoned.pop(), now, late=True)
        return "empty"
    if task.id in abandoned:
        if task.lease_expires_at - now >= timedelta(minutes=LEASE_MINUTES):
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
    try:
        tasks.transact(
            db, lambda: compare_tasks.submit_comparison(db, task_id, user, choice=random.choice("ab"), now=now)
        )
    except Conflict:
        if late:
            return "late_rejected"
        raise
    return "submitted"

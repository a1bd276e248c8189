"""Claiming compare tasks: which comparison slot a labeler gets, on which sides, its view,
renewing its lease, and the labeler's progress in an evaluation.

The rules (slots, sides, gold, race-free claims) are described in app/services/compare_tasks.py,
which re-exports these names; answering a task is app/services/compare_answers.py.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from app.models import (
    CompareTask,
    ComparisonJudgment,
    EvaluationComparison,
    EvaluationSample,
    Prompt,
    Task,
    User,
)
from app.models.base import utcnow
from app.services.errors import Conflict, Invalid, NotFound
from app.services.evaluations import get_evaluation, slots_taken
from app.services import leases
from app.services.leases import lease_until
from app.services.task_states import LEASED, enter_state
from app.services.tasks import keeps_labeler_off, takes_slot

__all__ = ["SIDES", "compare_link", "next_task", "progress", "relet", "renew_lease", "task_view"]

SIDES = ("a", "b")


# --- claiming ---------------------------------------------------------------------------


def _candidates(evaluation_id: int, overlap: int, labeler_id: int, now: datetime, gold: bool) -> Any:
    """Comparisons of the evaluation open to this labeler, fullest first, then by id."""
    c = EvaluationComparison
    t, ct = aliased(Task), aliased(CompareTask)
    taken = (
        select(func.count(t.id))
        .join(ct, ct.task_id == t.id)
        .where(ct.comparison_id == c.id, takes_slot(now, t))
        .correlate(c)
        .scalar_subquery()
    )
    t2, ct2 = aliased(Task), aliased(CompareTask)
    mine = (
        exists()
        .where(ct2.comparison_id == c.id, t2.id == ct2.task_id, t2.labeler_id == labeler_id, keeps_labeler_off(now, t2))
        .correlate(c)
    )
    query = select(c).where(c.evaluation_id == evaluation_id, ~mine)
    if gold:
        return query.where(c.gold_outcome.is_not(None)).order_by(c.id)
    return query.where(c.gold_outcome.is_(None), taken < overlap).order_by(taken.desc(), c.id)


def _labeler_holds(db: Session, comparison_id: int, labeler_id: int, now: datetime, exclude: int | None = None) -> bool:
    query = (
        select(func.count(Task.id))
        .join(CompareTask, CompareTask.task_id == Task.id)
        .where(CompareTask.comparison_id == comparison_id, Task.labeler_id == labeler_id, keeps_labeler_off(now))
    )
    if exclude is not None:
        query = query.where(Task.id != exclude)
    return bool(db.scalar(query))


def _slot_free(
    db: Session, comparison: EvaluationComparison, overlap: int, labeler_id: int, now: datetime, exclude: int | None = None
) -> tuple[bool, str]:
    """Recount a comparison's slots (call it holding the comparison's lock)."""
    if _labeler_holds(db, comparison.id, labeler_id, now, exclude):
        return False, "you have a newer task for the same comparison"
    if comparison.gold_outcome is not None:
        return True, ""
    taken = slots_taken(db, comparison.id, now) - (1 if exclude is not None and _takes(db, exclude, now) else 0)
    if taken >= overlap:
        return False, "another labeler has taken its slot"
    return True, ""


def _takes(db: Session, task_id: int, now: datetime) -> bool:
    return bool(db.scalar(select(func.count(Task.id)).where(Task.id == task_id, takes_slot(now))))


def _lock_comparison(db: Session, comparison_id: int) -> EvaluationComparison:
    comparison = db.scalar(
        select(EvaluationComparison)
        .where(EvaluationComparison.id == comparison_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if comparison is None:
        raise NotFound(f"comparison {comparison_id} not found")
    return comparison


def _samples(db: Session, comparison: EvaluationComparison) -> tuple[int, int] | None:
    """(sample of x, sample of y) for the comparison, or None if one is missing."""
    found = dict(
        db.execute(
            select(EvaluationSample.policy_id, EvaluationSample.id).where(
                EvaluationSample.prompt_id == comparison.prompt_id,
                EvaluationSample.sample_index == comparison.sample_index,
                EvaluationSample.policy_id.in_((comparison.policy_x_id, comparison.policy_y_id)),
            )
        ).all()
    )
    if comparison.policy_x_id not in found or comparison.policy_y_id not in found:
        return None
    return found[comparison.policy_x_id], found[comparison.policy_y_id]


def _held(db: Session, labeler_id: int, evaluation_id: int, now: datetime, live: bool) -> Task | None:
    lease = Task.lease_expires_at > now
    status = and_(Task.status == "leased", lease) if live else or_(
        Task.status == "expired", and_(Task.status == "leased", Task.lease_expires_at <= now)
    )
    order = (Task.created_at, Task.id) if live else (Task.lease_expires_at.desc(), Task.id.desc())
    return db.scalar(
        select(Task)
        .join(CompareTask, CompareTask.task_id == Task.id)
        .where(Task.labeler_id == labeler_id, CompareTask.evaluation_id == evaluation_id, status)
        .order_by(*order)
        .limit(1)
    )


def next_task(
    db: Session,
    user: User,
    evaluation_id: int,
    *,
    lease_minutes: float,
    gold_rate: float = 0.0,
    now: datetime | None = None,
    rng: random.Random | None = None,
) -> Task | None:
    """The labeler's compare task in this evaluation: their live lease, else their last
    expired one if its slot is still free, else a newly claimed one; None when nothing is
    left for them or the evaluation is not active."""
    now = now or utcnow()
    rng = rng or random.Random()
    ev = get_evaluation(db, evaluation_id)
    if ev.status != "active":
        return None
    db.execute(select(User.id).where(User.id == user.id).with_for_update(key_share=True))
    held = _held(db, user.id, ev.id, now, live=True)
    if held is not None:
        return held
    stale = _held(db, user.id, ev.id, now, live=False)
    if stale is not None:
        link = db.get(CompareTask, stale.id)
        comparison = _lock_comparison(db, link.comparison_id) if link else None
        if comparison is not None and _slot_free(db, comparison, ev.overlap, user.id, now, exclude=stale.id)[0]:
            enter_state(stale, LEASED, lease_expires_at=lease_until(now, lease_minutes))
            db.flush()
            return stale
    db.execute(
        update(Task)
        .where(Task.labeler_id == user.id, Task.status == "leased", Task.lease_expires_at <= now)
        .values(status="expired")
        .execution_options(synchronize_session=False)
    )
    passes = [True, False] if gold_rate > 0 and rng.random() < gold_rate else [False]
    for gold in passes:
        found = _claim(db, ev.id, ev.overlap, user.id, now, gold)
        if found is not None:
            comparison, (sample_x, sample_y) = found
            return _create(db, user, ev.id, comparison, sample_x, sample_y, now, lease_minutes)
    return None


def _claim(
    db: Session, evaluation_id: int, overlap: int, labeler_id: int, now: datetime, gold: bool, max_tries: int = 50
) -> tuple[EvaluationComparison, tuple[int, int]] | None:
    """Lock the first open comparison whose recount under the lock agrees; first skipping
    rows others hold locked, then (if that found nothing) waiting for them."""
    base = _candidates(evaluation_id, overlap, labeler_id, now, gold)
    rejected: list[int] = []
    for skip_locked in (True, False):
        for _ in range(max_tries):
            query = base.where(EvaluationComparison.id.not_in(rejected)) if rejected else base
            comparison = db.scalar(
                query.limit(1)
                .with_for_update(of=EvaluationComparison, skip_locked=skip_locked)
                .execution_options(populate_existing=True)
            )
            if comparison is None:
                break
            samples = _samples(db, comparison)
            if samples is not None and _slot_free(db, comparison, overlap, labeler_id, now)[0]:
                return comparison, samples
            rejected.append(comparison.id)
    return None


def _create(
    db: Session,
    user: User,
    evaluation_id: int,
    comparison: EvaluationComparison,
    sample_x: int,
    sample_y: int,
    now: datetime,
    lease_minutes: float,
) -> Task:
    served = db.scalar(select(func.count(CompareTask.task_id)).where(CompareTask.comparison_id == comparison.id)) or 0
    x_on_a = comparison.x_first if served % 2 == 0 else not comparison.x_first
    prompt = db.get(Prompt, comparison.prompt_id)
    if prompt is None:
        raise NotFound(f"prompt {comparison.prompt_id} not found")
    task = Task(
        prompt_id=prompt.id,
        prompt_set_id=prompt.prompt_set_id,
        labeler_id=user.id,
        kind="compare",
        status="leased",
        completion_ids=[],
        policy_id=None,
        lease_expires_at=now + timedelta(minutes=lease_minutes),
        created_at=now,
    )
    db.add(task)
    db.flush()
    a, b = (sample_x, sample_y) if x_on_a else (sample_y, sample_x)
    db.add(
        CompareTask(task_id=task.id, evaluation_id=evaluation_id, comparison_id=comparison.id, sample_a_id=a, sample_b_id=b)
    )
    db.flush()
    return task


# --- viewing and renewing ---------------------------------------------------------------


def compare_link(db: Session, task: Task) -> CompareTask:
    """The task's compare row (which comparison, which sample on each side); Invalid for
    a task of another kind."""
    link = db.get(CompareTask, task.id)
    if task.kind != "compare" or link is None:
        raise Invalid(f"task {task.id} is a {task.kind} task, not a compare task")
    return link


def task_view(db: Session, task: Task) -> dict[str, Any]:
    """The CompareTaskOut shape: the prompt and two texts, A and B, and nothing that says
    which policy wrote which."""
    link = compare_link(db, task)
    prompt = db.get(Prompt, task.prompt_id)
    if prompt is None:
        raise NotFound(f"prompt {task.prompt_id} of task {task.id} not found")
    texts = dict(
        db.execute(
            select(EvaluationSample.id, EvaluationSample.text).where(
                EvaluationSample.id.in_((link.sample_a_id, link.sample_b_id))
            )
        ).all()
    )
    return {
        "id": task.id,
        "kind": "compare",
        "status": task.status,
        "evaluation_id": link.evaluation_id,
        "prompt": prompt.display_text,
        "messages": [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in prompt.messages]
        if prompt.messages
        else None,
        "sides": [
            {"side": "a", "text": texts.get(link.sample_a_id, "")},
            {"side": "b", "text": texts.get(link.sample_b_id, "")},
        ],
        "lease_expires_at": task.lease_expires_at,
        "created_at": task.created_at,
        "server_time": utcnow(),
    }


def relet(db: Session, task: Task, now: datetime) -> None:
    """Let a labeler keep an expired task if its comparison's slot is still free."""
    link = compare_link(db, task)
    ev = get_evaluation(db, link.evaluation_id)
    comparison = _lock_comparison(db, link.comparison_id)
    ok, why = _slot_free(db, comparison, ev.overlap, task.labeler_id, now, exclude=task.id)
    if not ok:
        raise Conflict(
            f"the lease on task {task.id} expired at {task.lease_expires_at:%H:%M} UTC and {why}; ask for a new task"
        )


def renew_lease(db: Session, task_id: int, user: User, *, lease_minutes: float, now: datetime | None = None) -> Task:
    """Extend a compare task's lease (app/services/leases.py), reletting a lapsed one only
    while its comparison's slot is free."""
    return leases.renew_lease(db, task_id, user, lease_minutes=lease_minutes, now=now, relet=relet)


# --- progress ---------------------------------------------------------------------------


def progress(db: Session, user: User, evaluation_id: int, now: datetime | None = None) -> dict[str, Any]:
    """The labeler's counts in an evaluation and what is left for them (the page's empty state)."""
    now = now or utcnow()
    ev = get_evaluation(db, evaluation_id)
    done = db.scalar(
        select(func.count(ComparisonJudgment.id)).where(
            ComparisonJudgment.evaluation_id == ev.id,
            ComparisonJudgment.labeler_id == user.id,
            ComparisonJudgment.status == "active",
        )
    ) or 0
    holding = db.scalar(
        select(func.count(Task.id))
        .join(CompareTask, CompareTask.task_id == Task.id)
        .where(
            CompareTask.evaluation_id == ev.id,
            Task.labeler_id == user.id,
            Task.status == "leased",
            Task.lease_expires_at > now,
        )
    ) or 0
    open_now = _candidates(ev.id, ev.overlap, user.id, now, gold=False).order_by(None)
    left = db.scalar(select(func.count()).select_from(open_now.subquery())) if ev.status == "active" else 0
    others = db.scalar(
        select(func.min(Task.lease_expires_at))
        .join(CompareTask, CompareTask.task_id == Task.id)
        .where(
            CompareTask.evaluation_id == ev.id,
            Task.labeler_id != user.id,
            Task.status == "leased",
            Task.lease_expires_at > now,
        )
    )
    return {
        "evaluation_id": ev.id,
        "name": f"Evaluation {ev.id}",  # the admin's name may name the policies; labelers see none
        "status": ev.status,
        "compared": done,
        "holding": holding,
        "compare_left": left or 0,
        "next_lease_expiry": others,
    }

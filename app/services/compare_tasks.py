"""Compare tasks: blind A/B judgments of an evaluation's comparison slots.

A compare task is a ``tasks`` row of kind ``compare`` (so leases, skips and the labeler's
history work as for rank tasks) plus a :class:`~app.models.CompareTask` row saying which
comparison it serves and which sample is on side A and on side B.

Slots: a comparison takes at most ``Evaluation.overlap`` tasks that are submitted or hold a
live lease (the same rule as rank slots). A labeler never gets a comparison for which they
hold a task that has not expired (submitted, skipped, requeued, or leased and live). Gold
comparisons are served at ``settings.gold_rate``, once per labeler, not limited by overlap.

Sides: the first task of a slot puts policy x on side A when the slot's ``x_first`` (which
is balanced over each pair's slots at creation), and later tasks of the slot alternate, so
each policy is on side A about half the time, for every pair and every labeler. Nothing a
labeler receives names a policy: the task holds the prompt and two texts labelled a and b.

Claims are race-free as rank claims are (see app/services/tasks.py): PostgreSQL locks the
labeler's user row, then a candidate comparison row ``FOR UPDATE SKIP LOCKED`` and recounts
its slots under the lock; SQLite runs the whole claim in one ``BEGIN IMMEDIATE``
transaction. Run every function here inside :func:`app.services.tasks.transact`.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from app.models import (
    CHOICES,
    FLAGS,
    CompareTask,
    ComparisonJudgment,
    EvaluationComparison,
    EvaluationSample,
    Prompt,
    Task,
    User,
)
from app.models.base import utcnow
from app.services import human_gate, webhook_events
from app.services.errors import Conflict, Invalid, NotFound
from app.services.evaluations import get_evaluation, slots_taken
from app.services.leases import lease_until
from app.services.submissions import LIKERT_MAX, LIKERT_MIN, MAX_COMMENT_CHARS, check_undoable
from app.services.task_states import LEASED, SUBMITTED, enter_state
from app.services.tasks import keeps_labeler_off, lease_is_live, own_task, takes_slot

SIDES = ("a", "b")


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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


def _link(db: Session, task: Task) -> CompareTask:
    link = db.get(CompareTask, task.id)
    if task.kind != "compare" or link is None:
        raise Invalid(f"task {task.id} is a {task.kind} task, not a compare task")
    return link


def task_view(db: Session, task: Task) -> dict[str, Any]:
    """The CompareTaskOut shape: the prompt and two texts, A and B, and nothing that says
    which policy wrote which."""
    link = _link(db, task)
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


def _relet(db: Session, task: Task, now: datetime) -> None:
    """Let a labeler keep an expired task if its comparison's slot is still free."""
    link = _link(db, task)
    ev = get_evaluation(db, link.evaluation_id)
    comparison = _lock_comparison(db, link.comparison_id)
    ok, why = _slot_free(db, comparison, ev.overlap, task.labeler_id, now, exclude=task.id)
    if not ok:
        raise Conflict(
            f"the lease on task {task.id} expired at {task.lease_expires_at:%H:%M} UTC and {why}; ask for a new task"
        )


def renew_lease(db: Session, task_id: int, user: User, *, lease_minutes: float, now: datetime | None = None) -> Task:
    now = now or utcnow()
    task = own_task(db, task_id, user, lock=True)
    if task.status not in ("leased", "expired"):
        raise Conflict(f"task {task.id} is {task.status}; there is no lease to renew")
    if not lease_is_live(task, now):
        _relet(db, task, now)
    enter_state(task, LEASED, lease_expires_at=max(task.lease_expires_at, lease_until(now, lease_minutes)))
    db.flush()
    return task


# --- submitting -------------------------------------------------------------------------


def validate_ratings(ratings: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per side (``a``, ``b``): optional Likert 1-7 and flags of app.models.FLAGS."""
    clean: dict[str, dict[str, Any]] = {}
    for side, rating in ratings.items():
        if side not in SIDES:
            raise Invalid(f"ratings key {side!r} is not a side; use \"a\" or \"b\"")
        likert = rating.get("likert")
        if likert is not None and (
            isinstance(likert, bool) or not isinstance(likert, int) or not LIKERT_MIN <= likert <= LIKERT_MAX
        ):
            raise Invalid(f"likert for side {side} must be an integer from {LIKERT_MIN} to {LIKERT_MAX}, not {likert!r}")
        flags = list(rating.get("flags") or [])
        for flag in flags:
            if flag not in FLAGS:
                raise Invalid(f"unknown flag {flag!r} for side {side}; known flags: {', '.join(FLAGS)}")
        if likert is not None or flags:
            clean[side] = {"likert": likert, "flags": sorted(set(flags), key=FLAGS.index)}
    return dict(sorted(clean.items()))


def submit_comparison(
    db: Session,
    task_id: int,
    user: User,
    *,
    choice: str,
    ratings: Mapping[str, Mapping[str, Any]] | None = None,
    comment: str = "",
    time_spent_s: float | None = None,
    now: datetime | None = None,
) -> tuple[ComparisonJudgment, bool]:
    """Store the labeler's judgment of a compare task. Returns (row, created): the
    identical answer again returns the stored row (created False); a different one on a
    submitted task is a Conflict (undo first)."""
    now = now or utcnow()
    task = own_task(db, task_id, user, lock=True)
    link = _link(db, task)
    if choice not in CHOICES:
        raise Invalid(f"choice must be one of {', '.join(CHOICES)}, not {choice!r}")
    clean = validate_ratings(ratings or {})
    comment = (comment or "").strip()
    if len(comment) > MAX_COMMENT_CHARS:
        raise Invalid(f"comment is too long ({len(comment)} characters; at most {MAX_COMMENT_CHARS})")
    if time_spent_s is not None and not 0 <= time_spent_s <= 7 * 24 * 3600:
        raise Invalid("time_spent_s must be between 0 and one week")
    payload_hash = _hash({"choice": choice, "ratings": clean, "comment": comment})
    existing = db.scalar(select(ComparisonJudgment).where(ComparisonJudgment.task_id == task.id))
    if existing is not None and task.status == "submitted":
        if existing.payload_hash == payload_hash:
            return existing, False
        raise Conflict(f"task {task.id} already has a different judgment; undo it first to change it")
    if task.status in ("skipped", "requeued", "submitted"):
        raise Conflict(f"task {task.id} is {task.status}; ask for a new task")
    if not lease_is_live(task, now):
        _relet(db, task, now)
    if existing is not None:
        db.delete(existing)
        db.flush()
    comparison = db.get(EvaluationComparison, link.comparison_id)
    policy_of = dict(
        db.execute(
            select(EvaluationSample.id, EvaluationSample.policy_id).where(
                EvaluationSample.id.in_((link.sample_a_id, link.sample_b_id))
            )
        ).all()
    )
    policy_a, policy_b = policy_of[link.sample_a_id], policy_of[link.sample_b_id]
    a_is_x = comparison is not None and policy_a == comparison.policy_x_id
    outcome = {"a": "x" if a_is_x else "y", "b": "y" if a_is_x else "x"}.get(choice, choice)
    row = ComparisonJudgment(
        task_id=task.id,
        evaluation_id=link.evaluation_id,
        comparison_id=link.comparison_id,
        prompt_id=task.prompt_id,
        labeler_id=task.labeler_id,
        policy_a_id=policy_a,
        policy_b_id=policy_b,
        choice=choice,
        outcome=outcome,
        ratings=clean,
        comment=comment,
        time_spent_s=None if time_spent_s is None else float(time_spent_s),
        payload_hash=payload_hash,
        status="active",
        created_at=now,
    )
    db.add(row)
    enter_state(task, SUBMITTED, submitted_at=now)
    db.flush()
    # The judgment that completes a round's human evaluation settles its deploy gate.
    human_gate.settle(db, link.evaluation_id)
    webhook_events.evaluation_judged(db, link.evaluation_id)
    return row, True


def undo_judgment(
    db: Session, task_id: int, user: User, *, window_minutes: float, lease_minutes: float, now: datetime | None = None
) -> tuple[Task, dict[str, Any]]:
    """Take back the labeler's last submission (a judgment) within the undo window."""
    now = now or utcnow()
    task = own_task(db, task_id, user, lock=True)
    _link(db, task)
    check_undoable(db, task, user, window_minutes, now)  # the undo rule of every kind of task
    row = db.scalar(select(ComparisonJudgment).where(ComparisonJudgment.task_id == task.id))
    previous = {"choice": row.choice, "ratings": row.ratings, "comment": row.comment} if row else {}
    db.execute(delete(ComparisonJudgment).where(ComparisonJudgment.task_id == task.id))
    enter_state(task, LEASED, lease_expires_at=lease_until(now, lease_minutes))
    db.flush()
    return task, previous


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

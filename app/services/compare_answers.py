"""Answering compare tasks: a judgment (choice, ratings, comment) stored or taken back.

The judgment that completes a round's human evaluation settles its deploy gate
(app/services/human_gate.py). Re-exported by app/services/compare_tasks.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.models import CHOICES, FLAGS, ComparisonJudgment, EvaluationComparison, EvaluationSample, Task, User
from app.models.base import utcnow
from app.services import human_gate, webhook_events
from app.services.compare_claims import SIDES, compare_link, relet
from app.services.errors import Conflict, Invalid
from app.services.leases import lease_until
from app.services.submissions import LIKERT_MAX, LIKERT_MIN, MAX_COMMENT_CHARS, answer_hash, check_undoable
from app.services.task_states import LEASED, SUBMITTED, enter_state
from app.services.tasks import lease_is_live, own_task

__all__ = ["submit_comparison", "undo_judgment", "validate_ratings"]


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
    link = compare_link(db, task)
    if choice not in CHOICES:
        raise Invalid(f"choice must be one of {', '.join(CHOICES)}, not {choice!r}")
    clean = validate_ratings(ratings or {})
    comment = (comment or "").strip()
    if len(comment) > MAX_COMMENT_CHARS:
        raise Invalid(f"comment is too long ({len(comment)} characters; at most {MAX_COMMENT_CHARS})")
    if time_spent_s is not None and not 0 <= time_spent_s <= 7 * 24 * 3600:
        raise Invalid("time_spent_s must be between 0 and one week")
    payload_hash = answer_hash({"choice": choice, "ratings": clean, "comment": comment})
    existing = db.scalar(select(ComparisonJudgment).where(ComparisonJudgment.task_id == task.id))
    if existing is not None and task.status == "submitted":
        if existing.payload_hash == payload_hash:
            return existing, False
        raise Conflict(f"task {task.id} already has a different judgment; undo it first to change it")
    if task.status in ("skipped", "requeued", "submitted"):
        raise Conflict(f"task {task.id} is {task.status}; ask for a new task")
    if not lease_is_live(task, now):
        relet(db, task, now)
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
    compare_link(db, task)
    check_undoable(db, task, user, window_minutes, now)  # the undo rule of every kind of task
    row = db.scalar(select(ComparisonJudgment).where(ComparisonJudgment.task_id == task.id))
    previous = {"choice": row.choice, "ratings": row.ratings, "comment": row.comment} if row else {}
    db.execute(delete(ComparisonJudgment).where(ComparisonJudgment.task_id == task.id))
    enter_state(task, LEASED, lease_expires_at=lease_until(now, lease_minutes))
    db.flush()
    return task, previous

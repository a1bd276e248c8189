"""A task's states and the changes between them, in one place; loading a task row.

Every change of ``Task.status`` goes through :func:`enter_state` (one row) or filters on
:func:`entered_from` (a bulk UPDATE), as Open-Assistant's message trees do with their
``_enter_state``. The services check the business rules first and raise their own, more
specific errors (a submitted task cannot be skipped, ...); this is the backstop that
keeps a task from ever taking a change that no rule allows.

::

    leased ──► submitted ──► requeued          (an admin sends the answer back)
      │  ▲         │
      │  └─────────┘ undo (a fresh lease; the slot never freed)
      ├──► skipped
      └──► expired ──► leased | submitted | skipped   (the slot was still free)

A leased task whose ``lease_expires_at`` has passed is *lapsed*: still ``leased`` in the
row, but it takes no slot (app/services/slots.py). Claiming marks a labeler's lapsed
leases ``expired``. ``leased -> leased`` is a renewal.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Task, TaskStatus, User
from app.services.errors import Conflict, Forbidden, NotFound

LEASED, SUBMITTED, SKIPPED, EXPIRED, REQUEUED = (
    TaskStatus.LEASED,
    TaskStatus.SUBMITTED,
    TaskStatus.SKIPPED,
    TaskStatus.EXPIRED,
    TaskStatus.REQUEUED,
)

TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    LEASED: frozenset({LEASED, SUBMITTED, SKIPPED, EXPIRED}),
    EXPIRED: frozenset({LEASED, SUBMITTED, SKIPPED}),
    SUBMITTED: frozenset({LEASED, REQUEUED}),
    SKIPPED: frozenset(),
    REQUEUED: frozenset(),
}
"""State -> the states it may change to."""


def can_enter(current: str, new: TaskStatus) -> bool:
    return new in TRANSITIONS[TaskStatus(current)]


def entered_from(new: TaskStatus) -> tuple[str, ...]:
    """The states a task may be in to change to ``new`` (for bulk UPDATE filters)."""
    return tuple(s.value for s, targets in TRANSITIONS.items() if new in targets)


def enter_state(
    task: Task,
    new: TaskStatus,
    *,
    lease_expires_at: datetime | None = None,
    submitted_at: datetime | None = None,
) -> Task:
    """Change ``task`` to ``new`` (raises Conflict when no rule allows it).

    Entering ``leased`` needs ``lease_expires_at``; entering ``submitted`` records
    ``submitted_at``; leaving ``submitted`` for a lease clears it.
    """
    if not can_enter(task.status, new):
        raise Conflict(f"task {task.id} is {task.status} and cannot become {new}")
    if new is LEASED:
        if lease_expires_at is None:
            raise ValueError("a lease needs lease_expires_at")
        task.lease_expires_at = lease_expires_at
        task.submitted_at = None
    elif new is SUBMITTED:
        task.submitted_at = submitted_at
    task.status = new.value
    return task


def get_task(db: Session, task_id: int, *, lock: bool = False) -> Task:
    """The task row; ``lock`` takes its row lock (PostgreSQL) and reloads it."""
    query = select(Task).where(Task.id == task_id)
    if lock:
        query = query.with_for_update(key_share=True).execution_options(populate_existing=True)
    task = db.scalar(query)
    if task is None:
        raise NotFound(f"task {task_id} not found")
    return task


def own_task(db: Session, task_id: int, user: User, *, lock: bool = False) -> Task:
    """The task if it is this labeler's; 404 if there is none, 403 if it is someone else's."""
    return check_owner(get_task(db, task_id, lock=lock), user)


def check_owner(task: Task, user: User) -> Task:
    """``task`` if it is this labeler's; 403 if it is someone else's."""
    if task.labeler_id != user.id:
        raise Forbidden(f"task {task.id} belongs to another labeler")
    return task

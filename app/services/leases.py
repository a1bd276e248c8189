"""Leases: a labeler's timed hold on a task, and what happens when it lapses.

A claim (app/services/claims.py) hands out a lease of ``settings.lease_minutes``; the
page renews it while the labeler works. A lapsed lease frees its slot at once
(app/services/slots.py) but the row stays ``leased`` until its labeler claims again
(then it is ``expired``). Coming back to a lapsed task - to renew it, submit it, or be
given it again - is allowed while its slot is still free.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Integer, and_, bindparam, exists, func, or_, select, update
from sqlalchemy.orm import Session

from app.models import PromptSet, Slot, Task, TaskStatus, User
from app.models.base import UTCDateTime, utcnow
from app.services import continue_tasks, conversations
from app.services.errors import Conflict
from app.services.prompt_sets import get_prompt_set
from app.services.slots import MINE, SlotCheck, check_slot, live_lease, lock_pair, reap_lapsed
from app.services.task_states import EXPIRED, LEASED, enter_state, entered_from, own_task


def lease_until(now: datetime, lease_minutes: float) -> datetime:
    return now + timedelta(minutes=lease_minutes)


def lease_is_live(task: Task, now: datetime) -> bool:
    """The task is leased and its lease has not lapsed (so it holds a slot)."""
    return task.status == TaskStatus.LEASED and task.lease_expires_at > now


def _own_slot_free(db: Session, task: Task, ps: PromptSet, now: datetime) -> SlotCheck:
    """Whether ``task``'s labeler may hold its slot again now (its prompt locked first).
    Continue tasks count per reply node against the set's branching limit
    (app/services/continue_tasks.py); the others per prompt (and policy) against overlap."""
    prompt = lock_pair(db, task.prompt_id, task.kind, task.policy_id)
    if task.kind == "continue":
        return continue_tasks.check_continue_slot(
            db, int(task.node_id or 0), task.labeler_id, conversations.settings_of(ps).branching, now,
            exclude_task_id=task.id,
        )
    return check_slot(
        db, prompt, task.kind, task.labeler_id, ps.overlap, now, exclude_task_id=task.id, policy_id=task.policy_id
    )


def held_task(db: Session, labeler_id: int, prompt_set_id: int, kind: str, now: datetime) -> Task | None:
    """The labeler's oldest live lease in this set and kind, if any."""
    return db.scalar(
        select(Task)
        .where(
            Task.labeler_id == labeler_id,
            Task.prompt_set_id == prompt_set_id,
            Task.kind == kind,
            live_lease(now),
        )
        .order_by(Task.created_at, Task.id)
        .limit(1)
        .execution_options(populate_existing=True)
    )


def relet_lapsed(
    db: Session, labeler_id: int, ps: PromptSet, kind: str, now: datetime, lease_minutes: float
) -> Task | None:
    """Back after the lease ran out (a break, a reload): the labeler's latest lapsed task in
    this set and kind, leased again if its slot is still free, so the page can restore
    what they had entered. None when there is none or its slot was taken."""
    stale = db.scalar(
        select(Task)
        .where(
            Task.labeler_id == labeler_id,
            Task.prompt_set_id == ps.id,
            Task.kind == kind,
            _lapsed(now),
        )
        .order_by(Task.lease_expires_at.desc(), Task.id.desc())
        .limit(1)
        # its row lock, and its current values: a claim of another labeler may have marked
        # it expired (slots.reap_lapsed) since this session last loaded it
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    if stale is None:
        return None
    if not _own_slot_free(db, stale, ps, now).ok:
        return None
    enter_state(stale, LEASED, lease_expires_at=lease_until(now, lease_minutes))
    db.flush()
    return stale


def _lapsed(now: datetime) -> ColumnElement[bool]:
    """Tasks whose lease ran out: marked expired, or still leased past their lease."""
    return or_(Task.status == TaskStatus.EXPIRED, and_(Task.status == TaskStatus.LEASED, Task.lease_expires_at <= now))


class LeaseProbe(NamedTuple):
    """What a claim must do before it looks for new work, read in one statement
    (:func:`probe_leases`): each field is the condition under which one of
    :func:`held_task`, :func:`relet_lapsed`, :func:`expire_lapsed` and
    :func:`~app.services.slots.reap_lapsed` has anything to do."""

    live: bool  # the labeler holds a live lease in this set and kind
    lapsed: bool  # ... or a lapsed one there that could be leased again
    expire_mine: bool  # the labeler has leases (any set) past their time, still marked leased
    reap_set: bool  # the set's slots rows say a lease lapsed since the last reap


def _probe_statement() -> Any:
    labeler: Any = bindparam("labeler_id", type_=Integer)
    ps_id: Any = bindparam("ps_id", type_=Integer)
    kind: Any = bindparam("kind")
    now: Any = bindparam("now", type_=UTCDateTime())
    mine = (Task.labeler_id == labeler, Task.prompt_set_id == ps_id, Task.kind == kind)
    return select(
        exists().where(*mine, live_lease(now)).label("live"),
        exists().where(*mine, _lapsed(now)).label("lapsed"),
        exists().where(Task.labeler_id == labeler, Task.status == TaskStatus.LEASED, Task.lease_expires_at <= now)
        .label("expire_mine"),
        # the set's earliest lapse, not EXISTS: PostgreSQL's generic plan for a prepared
        # EXISTS (next_lapse <= $now) scanned the whole slots table (19 ms at 50,000
        # prompts); min() reads the first entry of ix_slots_lapse whatever the plan
        (select(func.min(Slot.next_lapse)).where(Slot.prompt_set_id == ps_id).scalar_subquery() <= now)
        .label("reap_set"),
    )


_PROBE = _probe_statement()


def probe_leases(db: Session, labeler_id: int, prompt_set_id: int, kind: str, now: datetime) -> LeaseProbe:
    """The four lease checks a claim starts with, as one round trip (issue 16: the claim
    used to send each as its own statement, and all but the first are usually empty)."""
    row = db.execute(_PROBE, {"labeler_id": labeler_id, "ps_id": prompt_set_id, "kind": kind, "now": now}).one()
    return LeaseProbe(*(bool(v) for v in row))


def resume_or_tidy(
    db: Session, labeler_id: int, ps: PromptSet, kind: str, now: datetime, lease_minutes: float
) -> Task | None:
    """Before a new claim: the labeler's live lease in this set and kind, else their lapsed
    one leased again if its slot is free; otherwise mark their lapsed leases expired and
    reap the set's lapsed slots, so the claim sees them free. Only the steps the probe
    says have work run."""
    probe = probe_leases(db, labeler_id, ps.id, kind, now)
    if probe.live:
        held = held_task(db, labeler_id, ps.id, kind, now)
        if held is not None:
            return held
    if probe.lapsed:
        relet = relet_lapsed(db, labeler_id, ps, kind, now, lease_minutes)
        if relet is not None:
            return relet
    if probe.expire_mine:
        expire_lapsed(db, labeler_id, now)
    if probe.reap_set:
        reap_lapsed(db, ps.id, now)
    return None


def expire_lapsed(db: Session, labeler_id: int, now: datetime) -> None:
    """Mark the labeler's lapsed leases ``expired`` (one UPDATE)."""
    db.execute(
        update(Task)
        .where(
            Task.labeler_id == labeler_id,
            Task.status.in_(entered_from(EXPIRED)),  # leased
            Task.lease_expires_at <= now,
        )
        .values(status=EXPIRED.value)
        .execution_options(synchronize_session=False)
    )


def relet_expired(db: Session, task: Task, now: datetime) -> None:
    """Let a labeler keep working on a task whose lease ran out, if its slot is still free.

    Locks the prompt and recounts; raises Conflict when another labeler took the slot.
    """
    check = _own_slot_free(db, task, get_prompt_set(db, task.prompt_set_id), now)
    if not check.ok:
        why = (
            "you have a newer task for the same prompt"
            if check.reason == MINE
            else "another labeler has taken its slot"
        )
        raise Conflict(
            f"the lease on task {task.id} expired at {task.lease_expires_at:%H:%M} UTC and {why}; "
            "ask for a new task"
        )


#: Let a labeler keep a task whose lease lapsed, or raise Conflict: ``relet(db, task, now)``.
Relet = Callable[[Session, Task, datetime], None]


def renew_lease(
    db: Session, task_id: int, user: User, *, lease_minutes: float, now: datetime | None = None,
    relet: Relet = relet_expired,
) -> Task:
    """Extend the lease of an own task that is being worked on (the page calls it while
    the labeler is active). An expired lease is renewed only if its slot is still free,
    as ``relet`` decides (rank and demonstrate slots by default; compare tasks pass theirs)."""
    now = now or utcnow()
    task = own_task(db, task_id, user, lock=True)
    if task.status not in (TaskStatus.LEASED, TaskStatus.EXPIRED):
        raise Conflict(f"task {task.id} is {task.status}; there is no lease to renew")
    if not lease_is_live(task, now):
        relet(db, task, now)
    enter_state(task, LEASED, lease_expires_at=max(task.lease_expires_at, lease_until(now, lease_minutes)))
    db.flush()
    return task

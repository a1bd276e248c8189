"""Slots: how many labelers may work on a prompt, and who counts against that.

The ``slots`` table (:class:`app.models.Slot`, migration 0007) holds, per (prompt, kind,
policy) pair, how many tasks are ``submitted`` and ``leased`` (``taken`` is their sum) and
whether a claim serves the pair now (``served``: the rank pair of a regular prompt whose
completions :mod:`app.services.serving` picks, or the demonstrate row of a prompt that
wants demonstrations). Database triggers keep it, in the same transaction as every write
to tasks, completions, policies, prompts and prompt sets, so no code path can forget it.
A claim finds an open pair through its index (:func:`open_slot_statement`) instead of
counting tasks across the set. A lapsed lease still counts in ``leased`` until a claim
marks it ``expired`` (:func:`reap_lapsed`, which every claim runs first, so a claim sees
lapsed slots as free, as the rule below says); ``next_lapse`` is a lower bound of the
pair's lease expiries that finds those rows through an index.

A *slot* is taken by a task that is ``submitted``, or ``leased`` with ``lease_expires_at``
in the future. Lapsed leases free their slot without anyone having to clean up; requeued
and skipped tasks take no slot. Rank slots belong to a (prompt, policy) pair: a rank task
records the policy whose completions it shows (``Task.policy_id``), and each pair serves at
most ``PromptSet.overlap`` slots, so after a redeploy the new policy's completions of a
prompt are ranked again. Demonstrate slots belong to the prompt (``overlap`` per prompt).
Gold prompts are not limited by overlap.

A labeler is kept off a (prompt, policy) pair for ranking, or off a prompt for
demonstrating, by any of their own tasks there that is not expired: submitted, skipped,
requeued, or leased and live.

The claims (app/services/claims.py), the sampler's plan (``policies.sampling_plan``), the
labeler's progress and the dashboard's progress (``stats.progress``) all count with the
functions here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Integer, and_, bindparam, case, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from app.db import is_postgres
from app.models import Policy, Prompt, Ranking, Slot, SubmissionStatus, Task, TaskStatus
from app.models.base import UTCDateTime
from app.services.prompt_sets import get_prompt

PolicyRef = int | ColumnElement[Any] | None
"""A policy id, or an SQL expression for one (a column of ``serving.served_pairs``), or
None (no policy filter)."""


def live_lease(now: datetime, t: Any = Task) -> ColumnElement[bool]:
    """Tasks (``t``: Task or an alias) leased with a lease that has not lapsed (the SQL of
    ``leases.lease_is_live``)."""
    return and_(t.status == TaskStatus.LEASED, t.lease_expires_at > now)


def takes_slot(now: datetime, t: Any = Task) -> ColumnElement[bool]:
    """Tasks that occupy a slot: submitted, or leased and live."""
    return or_(t.status == TaskStatus.SUBMITTED, live_lease(now, t))


def keeps_labeler_off(now: datetime, t: Any = Task) -> ColumnElement[bool]:
    """A labeler's own tasks that keep them off a prompt: every task that has not expired."""
    return or_(
        t.status.in_((TaskStatus.SUBMITTED, TaskStatus.SKIPPED, TaskStatus.REQUEUED)),
        live_lease(now, t),
    )


def taken_slots(kind: str, now: datetime, policy: PolicyRef = None) -> Any:
    """Per prompt (correlated to ``Prompt``): slots taken, of one policy's rank tasks when
    ``policy`` is given."""
    t = aliased(Task)
    conds = [t.prompt_id == Prompt.id, t.kind == kind, takes_slot(now, t)]
    if policy is not None:
        conds.append(t.policy_id == policy)
    return select(func.count(t.id)).where(*conds).correlate_except(t).scalar_subquery()


def labeler_has(kind: str, labeler_id: Any, now: datetime, policy: PolicyRef = None) -> ColumnElement[bool]:
    """Per prompt: the labeler has a task that keeps them off (of one policy when given)."""
    t = aliased(Task)
    conds = [t.prompt_id == Prompt.id, t.kind == kind, t.labeler_id == labeler_id, keeps_labeler_off(now, t)]
    if policy is not None:
        conds.append(t.policy_id == policy)
    return exists().where(*conds).correlate_except(t)


def rank_slots_used(now: datetime, policy_id: int) -> Any:
    """Subquery (``prompt_id``, ``n``): rank slots taken per prompt for ``policy_id``'s
    completions (for the sampler, which fills the deployed policy's slots)."""
    return (
        select(Task.prompt_id, func.count(Task.id).label("n"))
        .where(Task.policy_id == policy_id, Task.kind == "rank", takes_slot(now))
        .group_by(Task.prompt_id)
        .subquery()
    )


def filled_rank_slots(db: Session, set_ids: list[int]) -> Any:
    """Subquery (``prompt_id``, ``n``): per prompt of these sets, the active rankings that
    fill its rank slots now.

    What is left to do is the deployed policy's work, so only rankings of tasks that
    showed the deployed policy's completions count. Gold prompts show fixed completions
    whatever is deployed: all their rankings count. With nothing deployed, the policy with
    the most rankings of the prompt counts.
    """
    deployed = db.scalar(select(Policy.id).where(Policy.deployed.is_(True)))
    pair = case((Prompt.is_gold.is_(True), -1), else_=func.coalesce(Task.policy_id, 0))
    per_pair = (
        select(Ranking.prompt_id.label("prompt_id"), func.count(Ranking.id).label("n"))
        .join(Task, Task.id == Ranking.task_id)
        .join(Prompt, Prompt.id == Ranking.prompt_id)
        .where(Ranking.status == SubmissionStatus.ACTIVE, Prompt.prompt_set_id.in_(set_ids))
        .group_by(Ranking.prompt_id, pair)
    )
    if deployed is not None:
        per_pair = per_pair.where(or_(Prompt.is_gold.is_(True), Task.policy_id == deployed))
    sub = per_pair.subquery()
    return select(sub.c.prompt_id, func.max(sub.c.n).label("n")).group_by(sub.c.prompt_id).subquery()


# --- one prompt, under its lock -----------------------------------------------------

MINE = "the labeler already has a task for this prompt"


@dataclass
class SlotCheck:
    ok: bool
    reason: str = ""


def lock_prompt(db: Session, prompt_id: int) -> Prompt:
    """Lock a prompt row (PostgreSQL: FOR NO KEY UPDATE, waiting) and return it."""
    return get_prompt(db, prompt_id, lock=True)


def slot_key(kind: str, policy_id: int | None) -> int:
    """The ``slots.policy_id`` of a task: its policy for rank tasks, 0 otherwise (or none)."""
    return (policy_id or 0) if kind == "rank" else 0


def lock_pair(db: Session, prompt_id: int, kind: str, policy_id: int | None) -> Prompt:
    """Lock a prompt and then its pair's slots row (PostgreSQL, waiting), the locks a claim
    of that pair holds, so a recount by :func:`check_slot` is exact. Returns the prompt."""
    prompt = lock_prompt(db, prompt_id)
    if is_postgres(db):
        db.execute(
            select(Slot.id)
            .where(Slot.prompt_id == prompt_id, Slot.kind == kind, Slot.policy_id == slot_key(kind, policy_id))
            .with_for_update()
        )
    return prompt


# --- the slot table: claims and lapsed leases ---------------------------------------

_S = Slot.__table__
_T = Task.__table__
_KEEPS_OFF = ("submitted", "skipped", "requeued")


def _own_task_on_pair(kind: str) -> ColumnElement[bool]:
    """Per slots row: the labeler (``labeler_id``) has a task there that keeps them off."""
    now = bindparam("now", type_=UTCDateTime())
    conds = [
        _T.c.prompt_id == _S.c.prompt_id,
        _T.c.kind == kind,
        _T.c.labeler_id == bindparam("labeler_id", type_=Integer),
        or_(_T.c.status.in_(_KEEPS_OFF), and_(_T.c.status == "leased", _T.c.lease_expires_at > now)),
    ]
    if kind == "rank":
        conds.append(func.coalesce(_T.c.policy_id, 0) == _S.c.policy_id)
    return exists().where(*conds)


def open_slots(kind: str) -> Any:
    """``select`` of (slot id, prompt id, policy id) over the served pairs of a set
    (``ps_id``) with a free slot (``taken < ps_overlap``) that the labeler
    (``labeler_id``, at ``now``) is not kept off, in claiming order: pairs others have
    started first, so overlapping judgements complete, then by prompt id."""
    return (
        select(_S.c.id, _S.c.prompt_id, _S.c.policy_id)
        .where(
            _S.c.prompt_set_id == bindparam("ps_id", type_=Integer),
            _S.c.kind == kind,
            _S.c.served.is_(True),
            _S.c.taken < bindparam("ps_overlap", type_=Integer),
            ~_own_task_on_pair(kind),
        )
        .order_by(_S.c.taken.desc(), _S.c.prompt_id)
    )


_open_statements: dict[tuple[str, bool], Any] = {}


def open_slot_statement(kind: str, skip_locked: bool) -> Any:
    """The first open slots row of :func:`open_slots`, locked (``FOR UPDATE``, skipping
    rows other claimers hold when ``skip_locked``). Built once per process."""
    key = (kind, skip_locked)
    stmt = _open_statements.get(key)
    if stmt is None:
        stmt = open_slots(kind).limit(1).with_for_update(skip_locked=skip_locked)
        _open_statements[key] = stmt
    return stmt


_LAPSED = (
    select(_S.c.id, _S.c.prompt_id)
    .where(_S.c.prompt_set_id == bindparam("ps_id", type_=Integer), _S.c.next_lapse <= bindparam("now", type_=UTCDateTime()))
    .limit(bindparam("limit", type_=Integer))
    .with_for_update(skip_locked=True)
)


def reap_lapsed(db: Session, prompt_set_id: int, now: datetime, limit: int = 50) -> int:
    """Mark lapsed leases of this set ``expired`` so their slots count as free again, and
    set the rows' ``next_lapse`` to the earliest lease left. Skips slots rows and tasks
    other transactions hold (their owners are changing them anyway; the next claim
    retries). Cheap when nothing lapsed: one index probe. Returns the rows refreshed."""
    rows = db.execute(_LAPSED, {"ps_id": prompt_set_id, "now": now, "limit": limit}).all()
    if not rows:
        return 0
    slot_ids = [r.id for r in rows]
    prompt_ids = sorted({r.prompt_id for r in rows})
    lapsed = (
        select(_T.c.id)
        .where(
            _T.c.prompt_id.in_(prompt_ids),
            _T.c.kind.in_(("rank", "demonstrate")),
            _T.c.status == "leased",
            _T.c.lease_expires_at <= now,
        )
        .with_for_update(skip_locked=True)
    )
    task_ids = list(db.scalars(lapsed))
    if task_ids:
        db.execute(
            update(_T).where(_T.c.id.in_(task_ids), _T.c.status == "leased").values(status=TaskStatus.EXPIRED.value)
        )
    t = _T.alias("t")
    earliest = (
        select(func.min(t.c.lease_expires_at))
        .where(
            t.c.prompt_id == _S.c.prompt_id,
            t.c.kind == _S.c.kind,
            case((t.c.kind == "rank", func.coalesce(t.c.policy_id, 0)), else_=0) == _S.c.policy_id,
            t.c.status == "leased",
        )
        .scalar_subquery()
    )
    db.execute(update(_S).where(_S.c.id.in_(slot_ids)).values(next_lapse=earliest))
    return len(rows)


def check_slot(
    db: Session,
    prompt: Prompt,
    kind: str,
    labeler_id: int,
    overlap: int,
    now: datetime,
    exclude_task_id: int | None = None,
    policy_id: int | None = None,
) -> SlotCheck:
    """Whether this labeler may hold a slot of ``prompt`` now. Call it holding the prompt's lock.

    For a rank task on a regular prompt the slots are those of ``policy_id`` (the policy
    whose completions the task shows); gold prompts and demonstrations count per prompt.
    """
    others = [Task.prompt_id == prompt.id, Task.kind == kind]
    if kind == "rank" and not prompt.is_gold:
        others.append(Task.policy_id.is_(None) if policy_id is None else Task.policy_id == policy_id)
    if exclude_task_id is not None:
        others.append(Task.id != exclude_task_id)
    mine = db.scalar(
        select(func.count(Task.id)).where(*others, Task.labeler_id == labeler_id, keeps_labeler_off(now))
    )
    if mine:
        return SlotCheck(False, MINE)
    if prompt.is_gold and kind == "rank":
        return SlotCheck(True)
    taken = db.scalar(select(func.count(Task.id)).where(*others, takes_slot(now))) or 0
    if taken >= overlap:
        return SlotCheck(False, f"all {overlap} slot(s) of this prompt are taken")
    return SlotCheck(True)

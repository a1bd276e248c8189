"""Slots: how many labelers may work on a prompt, and who counts against that.

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

from sqlalchemy import ColumnElement, and_, case, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from app.models import Policy, Prompt, Ranking, SubmissionStatus, Task, TaskStatus
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

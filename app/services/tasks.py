"""Labeling tasks as a labeler sees them: a task's view and their progress in a set.

Where the rest lives (this module re-exports the names callers used to find here):

- app/services/task_states.py - the states a task goes through and the one function that
  changes them; loading a task row (``get_task``, ``own_task``);
- app/services/slots.py - who may work on a prompt: slot counting against ``overlap``;
- app/services/serving.py - which policy's completions a rank task shows;
- app/services/claims.py - ``next_task``: claiming, race-free on both backends;
- app/services/leases.py - renewing a lease, and coming back after it lapsed;
- app/services/submissions.py - answering a task, skipping, undo;
- :func:`app.db.transact` - the retrying write transaction every labeling write runs in.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, and_, bindparam, case, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from app.db import transact
from app.models import (
    Completion,
    Policy,
    Prompt,
    PromptSet,
    Slot,
    SlotTotals,
    Task,
    TaskStatus,
    User,
)
from app.models.base import UTCDateTime, utcnow
from app.schemas.tasks import ProgressOut
from app.services import continue_tasks, conversations
from app.services.claims import next_task
from app.services.errors import NotFound
from app.services.leases import lease_is_live, relet_expired, renew_lease
from app.services.serving import served_completions
from app.services.slots import keeps_labeler_off, takes_slot
from app.services.task_states import get_task, own_task

__all__ = [
    "get_task",
    "keeps_labeler_off",
    "lease_is_live",
    "next_task",
    "own_task",
    "progress",
    "relet_expired",
    "renew_lease",
    "served_completions",
    "takes_slot",
    "task_view",
    "transact",
]


_VIEW = (
    select(Prompt, PromptSet, Completion.id, Completion.text)
    .join(PromptSet, PromptSet.id == Prompt.prompt_set_id)
    .outerjoin(
        Completion,
        and_(Completion.prompt_id == Prompt.id, Completion.id.in_(bindparam("completion_ids", expanding=True))),
    )
    .where(Prompt.id == bindparam("prompt_id", type_=Integer))
)


def task_view(db: Session, task: Task) -> dict[str, Any]:
    """The task as its labeler sees it (the TaskOut shape)."""
    # One statement: the prompt, its set (held here, so the conversation check below finds
    # it in the session) and the texts of the task's completions.
    rows = db.execute(
        _VIEW, {"prompt_id": task.prompt_id, "completion_ids": list(task.completion_ids or [])}
    ).all()
    if not rows:
        raise NotFound(f"prompt {task.prompt_id} of task {task.id} not found")
    prompt, _ps = rows[0][0], rows[0][1]
    texts = {cid: text for _, _, cid, text in rows if cid is not None}
    messages: list[dict[str, str]] | None = (
        [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in prompt.messages]
        if prompt.messages
        else None
    )
    in_tree = conversations.task_conversation(db, task, prompt)
    if in_tree is not None:
        messages, conversation = in_tree
    return {
        "id": task.id,
        "kind": task.kind,
        "status": task.status,
        "prompt_set_id": task.prompt_set_id,
        "prompt_id": task.prompt_id,
        "prompt": prompt.display_text,
        "messages": messages,
        "conversation": conversation if in_tree is not None else None,
        "completions": [{"id": cid, "text": texts[cid]} for cid in task.completion_ids or [] if cid in texts],
        "lease_expires_at": task.lease_expires_at,
        "created_at": task.created_at,
        "server_time": utcnow(),
    }



@functools.cache
def _progress_statements() -> tuple[Any, Any]:
    """The two statements of :func:`progress`, built once per process with bind parameters
    (``labeler_id``, ``ps_id``, ``overlap``, ``now``): building them per call (aliases,
    correlated subqueries) cost more CPU than running them."""
    labeler: Any = bindparam("labeler_id", type_=Integer)
    ps_id: Any = bindparam("ps_id", type_=Integer)
    overlap: Any = bindparam("overlap", type_=Integer)
    now: Any = bindparam("now", type_=UTCDateTime())
    S = Slot
    live = and_(Task.status == TaskStatus.LEASED, Task.lease_expires_at > now)
    pair_key = case((Task.kind == "rank", func.coalesce(Task.policy_id, 0)), else_=0)
    # An own task that keeps the labeler off an open pair: done, skipped, sent back, or held.
    keeps_off = and_(
        or_(Task.status.in_(("submitted", "skipped", "requeued")), live),
        exists().where(
            S.prompt_id == Task.prompt_id, S.kind == Task.kind, S.policy_id == pair_key,
            S.prompt_set_id == ps_id, S.served.is_(True), S.taken < overlap,
        ),
    )
    mine = (
        select(
            Task.kind, Task.status, pair_key, func.count(),
            func.sum(case((live, 1), else_=0)), func.sum(case((keeps_off, 1), else_=0)),
        )
        .where(Task.labeler_id == labeler, Task.prompt_set_id == ps_id)
        .group_by(Task.kind, Task.status, pair_key)
    )
    # When could a full prompt open up again? The earliest live lease of another labeler
    # on a pair served now (demonstrate: any) this labeler has not done.
    t, own = aliased(Task), aliased(Task)
    next_expiry = (
        select(func.min(t.lease_expires_at))
        .join(S, and_(
            S.prompt_id == t.prompt_id,
            S.kind == t.kind,
            S.policy_id == case((t.kind == "rank", func.coalesce(t.policy_id, 0)), else_=0),
        ))
        .where(
            t.prompt_set_id == ps_id,
            t.status == TaskStatus.LEASED,
            t.lease_expires_at > now,
            t.labeler_id != labeler,
            or_(t.kind != "rank", S.served.is_(True)),
            ~exists().where(
                own.prompt_id == t.prompt_id,
                own.kind == t.kind,
                own.policy_id.is_not_distinct_from(t.policy_id),
                own.labeler_id == labeler,
                keeps_labeler_off(now, own),
            ),
        )
        .scalar_subquery()
    )
    deployed_id = select(Policy.id).where(Policy.deployed.is_(True)).scalar_subquery()
    totals = select(
        SlotTotals.kind, SlotTotals.policy_id, SlotTotals.served, SlotTotals.open, deployed_id, next_expiry
    ).where(SlotTotals.prompt_set_id == ps_id)
    return mine, totals


def progress(db: Session, user: User, ps: PromptSet, now: datetime | None = None) -> ProgressOut:
    """What this labeler has done in the set and what is left for them right now, from the
    slots table (app/services/slots.py) and the labeler's own tasks: nothing here counts
    tasks or completions across the set.

    ``rank_left`` counts the served pairs with a free slot that ``next`` could give them
    (a lease that lapsed since the last claim in the set still counts as taken until a
    claim marks it expired). ``waiting_for_completions`` counts the regular prompts whose
    rank work for the deployed policy is not open yet because it lacks K ready
    completions (with no policy deployed: prompts where no policy has K).
    """
    now = now or utcnow()
    params = {"labeler_id": user.id, "ps_id": ps.id, "overlap": ps.overlap, "now": now}
    mine_stmt, totals_stmt = _progress_statements()
    # One pass over the labeler's own tasks in the set: their counts by kind and status,
    # the live ones, and those keeping them off a pair that is open for others.
    mine: dict[tuple[str, str], tuple[int, int]] = {}
    kept: dict[tuple[str, int], int] = {}
    for kind, status, pair, n, n_live, n_kept in db.execute(mine_stmt, params):
        n0, live0 = mine.get((kind, status), (0, 0))
        mine[(kind, status)] = (n0 + n, live0 + int(n_live or 0))
        kept[(kind, pair)] = kept.get((kind, pair), 0) + int(n_kept or 0)

    def n_mine(kind: str | None, status: str, is_live: bool = False) -> int:
        return sum(
            n_live if is_live else n
            for (k, st), (n, n_live) in mine.items()
            if (kind is None or k == kind) and st == status
        )

    # The set's counters (slot_totals), with the deployed policy and the next lease expiry
    # alongside: one statement. No rows means no slots, and then neither is needed.
    totals: dict[tuple[str, int], tuple[int, int]] = {}
    deployed: int | None = None
    next_lease: datetime | None = None
    for k, pol, served, n_open, deployed, next_lease in db.execute(totals_stmt, params):
        totals[(k, pol)] = (served, n_open)
    left = {key: n_open - kept.get(key, 0) for key, (_, n_open) in totals.items() if key[0] != "prompts"}
    rank_left = sum(n for (k, _), n in left.items() if k == "rank")
    demo_left = sum(n for (k, _), n in left.items() if k == "demonstrate")
    regular = totals.get(("prompts", 0), (0, 0))[0]
    if deployed is None:
        waiting = regular - sum(served for (k, _), (served, _) in totals.items() if k == "rank")
    else:
        served_deployed = totals.get(("rank", deployed), (0, 0))[0]
        open_elsewhere = sum(n for (k, pol), n in left.items() if k == "rank" and pol != deployed)
        waiting = regular - served_deployed - open_elsewhere

    offers_demos = ps.demonstration_share > 0 or totals.get(("demonstrate", 0), (0, 0))[0] > 0
    return ProgressOut(
        prompt_set_id=ps.id,
        name=ps.name,
        status=ps.status,
        ranked=n_mine("rank", TaskStatus.SUBMITTED),
        demonstrated=n_mine("demonstrate", TaskStatus.SUBMITTED),
        skipped=n_mine(None, TaskStatus.SKIPPED),
        holding=n_mine(None, TaskStatus.LEASED, True),
        rank_left=max(0, rank_left),
        demonstrate_left=max(0, demo_left),
        continued=n_mine("continue", TaskStatus.SUBMITTED),
        continue_left=continue_tasks.open_reply_count(db, ps, user.id, now),
        waiting_for_completions=max(0, waiting),
        offers_demonstrations=offers_demos,
        next_lease_expiry=next_lease,
    )

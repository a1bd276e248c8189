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

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from app.db import transact
from app.models import (
    Completion,
    Demonstration,
    Policy,
    Prompt,
    PromptSet,
    Ranking,
    SubmissionStatus,
    Task,
    TaskStatus,
    User,
)
from app.models.base import utcnow
from app.schemas.tasks import ProgressOut
from app.services.claims import next_task, open_prompts
from app.services.errors import NotFound
from app.services.leases import lease_is_live, relet_expired, renew_lease
from app.services.serving import has_k_ready_of, served_completions, served_pairs
from app.services.slots import keeps_labeler_off, labeler_has, live_lease, taken_slots, takes_slot
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


def task_view(db: Session, task: Task) -> dict[str, Any]:
    """The task as its labeler sees it (the TaskOut shape)."""
    prompt = db.get(Prompt, task.prompt_id)
    if prompt is None:
        raise NotFound(f"prompt {task.prompt_id} of task {task.id} not found")
    texts = dict(
        db.execute(select(Completion.id, Completion.text).where(Completion.id.in_(task.completion_ids or []))).all()
    )
    return {
        "id": task.id,
        "kind": task.kind,
        "status": task.status,
        "prompt_set_id": task.prompt_set_id,
        "prompt_id": task.prompt_id,
        "prompt": prompt.display_text,
        "messages": [
            {"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in prompt.messages
        ]
        if prompt.messages
        else None,
        "completions": [{"id": cid, "text": texts[cid]} for cid in task.completion_ids or [] if cid in texts],
        "lease_expires_at": task.lease_expires_at,
        "created_at": task.created_at,
        "server_time": utcnow(),
    }



def progress(db: Session, user: User, ps: PromptSet, now: datetime | None = None) -> ProgressOut:
    """What this labeler has done in the set and what is left for them right now.

    ``rank_left`` counts the prompts ``next`` could give them now (the served policy's
    pair open to them). ``waiting_for_completions`` counts the prompts whose rank work for
    the deployed policy is open to them but which lack its K ready completions (with no
    policy deployed: prompts where no policy has K).
    """
    now = now or utcnow()

    def count_prompts(*conds: ColumnElement[bool]) -> int:
        return db.scalar(select(func.count(Prompt.id)).where(*conds)) or 0

    mine = select(Task.kind, Task.status, func.count(Task.id)).where(
        Task.labeler_id == user.id, Task.prompt_set_id == ps.id
    )
    counts: dict[tuple[str, str], int] = {
        (kind, status): n for kind, status, n in db.execute(mine.group_by(Task.kind, Task.status)).all()
    }
    ranked = db.scalar(
        select(func.count(Ranking.id))
        .join(Task, Task.id == Ranking.task_id)
        .where(Ranking.labeler_id == user.id, Task.prompt_set_id == ps.id)
        .where(Ranking.status == SubmissionStatus.ACTIVE)
    )
    demonstrated = db.scalar(
        select(func.count(Demonstration.id))
        .join(Task, Task.id == Demonstration.task_id)
        .where(Demonstration.labeler_id == user.id, Task.prompt_set_id == ps.id)
        .where(Demonstration.status == SubmissionStatus.ACTIVE)
    )
    holding = db.scalar(
        select(func.count(Task.id)).where(
            Task.labeler_id == user.id,
            Task.prompt_set_id == ps.id,
            live_lease(now),
        )
    )
    deployed = db.scalar(select(Policy.id).where(Policy.deployed.is_(True)))
    # One statement for what depends on the served pairs, so they are computed once.
    served = served_pairs(ps)
    rank_open = open_prompts(ps, "rank", user.id, now, Prompt.id, served=served).order_by(None)
    rank_left = select(func.count()).select_from(rank_open.subquery()).scalar_subquery()
    regular = [Prompt.prompt_set_id == ps.id, Prompt.is_gold.is_(False)]
    if deployed is None:
        waiting = select(func.count(Prompt.id)).where(*regular, Prompt.id.not_in(select(served.c.prompt_id)))
    else:
        waiting = select(func.count(Prompt.id)).where(
            *regular,
            ~has_k_ready_of(ps.k, deployed),
            ~labeler_has("rank", user.id, now, deployed),
            taken_slots("rank", now, deployed) < ps.overlap,
            Prompt.id.not_in(rank_open),
        )
    # When could a full prompt open up again? The earliest live lease of another labeler
    # on a prompt (rank: on the pair served now) this labeler has not done.
    own = aliased(Task)
    next_expiry = select(func.min(Task.lease_expires_at)).where(
        Task.prompt_set_id == ps.id,
        Task.labeler_id != user.id,
        live_lease(now),
        or_(
            Task.kind != "rank",
            exists().where(served.c.prompt_id == Task.prompt_id, served.c.policy_id == Task.policy_id),
        ),
        ~exists().where(
            own.prompt_id == Task.prompt_id,
            own.kind == Task.kind,
            own.policy_id.is_not_distinct_from(Task.policy_id),
            own.labeler_id == user.id,
            keeps_labeler_off(now, own),
        ),
    )
    rank_left_n, waiting_n, next_expiry_at = db.execute(
        select(rank_left, waiting.scalar_subquery(), next_expiry.scalar_subquery())
    ).one()
    demo_open = open_prompts(ps, "demonstrate", user.id, now, Prompt.id).order_by(None)
    demo_left = db.scalar(select(func.count()).select_from(demo_open.subquery())) or 0
    offers_demos = ps.demonstration_share > 0 or count_prompts(
        Prompt.prompt_set_id == ps.id, Prompt.wants_demonstration.is_(True)
    ) > 0
    return ProgressOut(
        prompt_set_id=ps.id,
        name=ps.name,
        status=ps.status,
        ranked=ranked or 0,
        demonstrated=demonstrated or 0,
        skipped=sum(n for (_, status), n in counts.items() if status == TaskStatus.SKIPPED),
        holding=holding or 0,
        rank_left=rank_left_n or 0,
        demonstrate_left=demo_left,
        waiting_for_completions=waiting_n or 0,
        offers_demonstrations=offers_demos,
        next_lease_expiry=next_expiry_at,
    )

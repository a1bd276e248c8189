"""Read access to sampled completions (for admins, the simulator and evaluation scripts)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Completion, Prompt


def list_completions(
    db: Session,
    *,
    prompt_set_id: int | None = None,
    policy_id: int | None = None,
    prompt_id: int | None = None,
    split: str | None = None,
    status: str | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> list[tuple[Completion, Prompt]]:
    query = select(Completion, Prompt).join(Prompt, Prompt.id == Completion.prompt_id)
    if prompt_set_id is not None:
        query = query.where(Prompt.prompt_set_id == prompt_set_id)
    if policy_id is not None:
        query = query.where(Completion.policy_id == policy_id)
    if prompt_id is not None:
        query = query.where(Completion.prompt_id == prompt_id)
    if split is not None:
        query = query.where(Prompt.split == split)
    if status is not None:
        query = query.where(Completion.status == status)
    query = query.order_by(Completion.id).limit(limit).offset(offset)
    return [(c, p) for c, p in db.execute(query).all()]

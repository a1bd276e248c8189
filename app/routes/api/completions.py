"""Sampled completions, filterable (admin only)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from app.deps import DB, ApiAdmin
from app.schemas.completions import CompletionOut
from app.services.completions import list_completions

router = APIRouter(tags=["completions"])


@router.get("/completions", response_model=list[CompletionOut])
def completions(
    db: DB,
    _: ApiAdmin,
    prompt_set_id: int | None = None,
    policy_id: int | None = None,
    prompt_id: int | None = None,
    split: Literal["train", "validation"] | None = None,
    status: Literal["ready", "retired"] | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[CompletionOut]:
    rows = list_completions(
        db,
        prompt_set_id=prompt_set_id,
        policy_id=policy_id,
        prompt_id=prompt_id,
        split=split,
        status=status,
        limit=limit,
        offset=offset,
    )
    return [
        CompletionOut(
            id=c.id,
            prompt_id=p.id,
            prompt=p.display_text,
            split=p.split,
            policy_id=c.policy_id,
            text=c.text,
            seed=c.seed,
            params=c.params or {},
            token_count=c.token_count,
            finish_reason=c.finish_reason,
            gen_time_s=c.gen_time_s,
            status=c.status,
            created_at=c.created_at,
        )
        for c, p in rows
    ]

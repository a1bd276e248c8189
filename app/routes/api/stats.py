"""Progress and labeler quality (``GET /stats``) and sending a labeler's work back (requeue)."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import DB, ApiAdmin
from app.schemas.stats import RequeueIn, RequeueOut, StatsOut
from app.services import prompt_sets, requeue, stats

router = APIRouter(tags=["stats"])


@router.get("/stats", response_model=StatsOut)
def get_stats(db: DB, _: ApiAdmin, prompt_set_id: int | None = None) -> StatsOut:
    """Progress per set and split, the labeler table (throughput, skip rate, agreement with
    other labelers, accuracy against gold) and the overall agreement."""
    if prompt_set_id is not None:
        prompt_sets.get_prompt_set(db, prompt_set_id)
    return StatsOut.model_validate(stats.summary(db, prompt_set_id))


@router.post("/users/{user_id}/requeue", response_model=RequeueOut, tags=["users"])
def requeue_labeler(user_id: int, db: DB, admin: ApiAdmin, body: RequeueIn | None = None) -> RequeueOut:
    """Mark the labeler's active rankings (in one set, or all; optionally demonstrations too)
    and their tasks as requeued, so the slots are labeled again by others."""
    body = body or RequeueIn()
    if body.prompt_set_id is not None:
        prompt_sets.get_prompt_set(db, body.prompt_set_id)
    result = requeue.requeue_labeler(
        db, admin.user, user_id, body.prompt_set_id, include_demonstrations=body.include_demonstrations
    )
    db.commit()
    return result

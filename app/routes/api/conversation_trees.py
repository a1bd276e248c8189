"""A conversation set's trees (admin only; app/services/conversation_trees.py)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from app.deps import DB, ApiAdmin
from app.schemas.conversation_trees import TreesPageOut
from app.services import conversation_trees, prompt_sets

router = APIRouter(tags=["conversations"])


@router.get("/prompt-sets/{prompt_set_id}/trees", response_model=TreesPageOut)
def list_trees(
    prompt_set_id: int,
    db: DB,
    _: ApiAdmin,
    offset: int = Query(0, ge=0),
    limit: int = Query(20, ge=1, le=conversation_trees.MAX_TREES_PER_PAGE),
) -> TreesPageOut:
    """The set's conversation trees, oldest seed first: every message with who wrote it
    (policy version or labeler) and its children. 422 unless it is a conversation set."""
    page = conversation_trees.list_trees(db, prompt_sets.get_prompt_set(db, prompt_set_id), offset, limit)
    return TreesPageOut.model_validate(page)

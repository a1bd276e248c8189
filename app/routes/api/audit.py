"""The audit log of admin actions (admin only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.deps import DB, ApiAdmin
from app.schemas.stats import AuditEntryOut
from app.services import audit_view

router = APIRouter(tags=["audit"])


@router.get("/audit", response_model=list[AuditEntryOut])
def list_audit(
    db: DB,
    _: ApiAdmin,
    action: Annotated[str | None, Query(max_length=64, description="prefix, e.g. prompt_set.")] = None,
    actor: Annotated[str | None, Query(max_length=64, description="username")] = None,
    target_type: Annotated[str | None, Query(max_length=64)] = None,
    target_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(description="page backwards from this id")] = None,
) -> list[AuditEntryOut]:
    """Newest first: who did what, to what, when."""
    return audit_view.list_entries(
        db, action=action, actor=actor, target_type=target_type, target_id=target_id,
        limit=limit, before_id=before_id,
    )

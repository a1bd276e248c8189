"""Reading the audit log (who did what, when) for the dashboard and ``GET /api/v1/audit``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import AuditLog, User
from app.schemas.stats import AuditEntryOut as AuditEntry
from app.services.users import list_users

PAGE = 50


def list_entries(
    db: Session,
    *,
    action: str | None = None,
    actor: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[AuditEntry]:
    """Newest first, in the API's shape. ``action`` matches a prefix ("prompt_set." gives
    every prompt set action); ``before_id`` pages backwards."""
    query = select(AuditLog, User.username).outerjoin(User, User.id == AuditLog.actor_id)
    if action:
        query = query.where(AuditLog.action.startswith(action, autoescape=True))
    if actor:
        query = query.where(User.username == actor)
    if target_type:
        query = query.where(AuditLog.target_type == target_type)
    if target_id:
        query = query.where(AuditLog.target_id == target_id)
    if before_id is not None:
        query = query.where(AuditLog.id < before_id)
    rows = db.execute(query.order_by(AuditLog.id.desc()).limit(limit)).all()
    return [
        AuditEntry(
            id=e.id, created_at=e.created_at, actor_id=e.actor_id, actor=name, action=e.action,
            target_type=e.target_type, target_id=e.target_id, detail=e.detail or {},
        )
        for e, name in rows
    ]


def actions(db: Session) -> list[str]:
    """The distinct actions recorded so far (for the filter menu)."""
    return list(db.scalars(select(AuditLog.action).group_by(AuditLog.action).order_by(AuditLog.action)))


def count(db: Session) -> int:
    return db.scalar(select(func.count(AuditLog.id))) or 0


def page(db: Session, *, action: str | None, actor: str | None, before_id: int | None) -> dict[str, Any]:
    """The audit log page: one page of entries, the id to page back from, the filters' menus."""
    entries = list_entries(db, action=action, actor=actor, limit=PAGE + 1, before_id=before_id)
    return {
        "entries": entries[:PAGE],
        "older": entries[PAGE - 1].id if len(entries) > PAGE else None,
        "actions": actions(db),
        "action": action or "",
        "actor": actor or "",
        "actors": [u.username for u in list_users(db) if u.is_admin],
    }

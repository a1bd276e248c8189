"""The audit log of admin actions."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.models import AuditLog, User


def record(
    db: Session,
    actor: User | None,
    action: str,
    target_type: str | None = None,
    target_id: object | None = None,
    **detail: Any,
) -> AuditLog:
    entry = AuditLog(
        actor_id=actor.id if actor else None,
        action=action,
        target_type=target_type,
        target_id=None if target_id is None else str(target_id),
        detail=detail,
    )
    db.add(entry)
    return entry

"""Server-side browser sessions: a fresh random id at every login, revoked at logout."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.models import User, UserSession
from app.models.base import utcnow
from app.services.security import digest, new_secret


def create_session(db: Session, user: User, max_age_s: int) -> tuple[str, UserSession]:
    """Start a session; returns the cookie value (random id) and the row holding its digest."""
    session_id = new_secret(32)
    row = UserSession(
        session_hash=digest(session_id),
        user_id=user.id,
        csrf_token=new_secret(24),
        expires_at=utcnow() + timedelta(seconds=max_age_s),
    )
    db.add(row)
    db.flush()
    return session_id, row


def resolve_session(db: Session, session_id: str) -> tuple[UserSession, User] | None:
    row = db.execute(
        select(UserSession, User)
        .join(User, User.id == UserSession.user_id)
        .where(UserSession.session_hash == digest(session_id))
    ).first()
    if row is None:
        return None
    sess, user = row
    if sess.revoked_at is not None or sess.expires_at <= utcnow() or not user.is_active:
        return None
    return sess, user


def revoke_session(db: Session, session_id: str) -> None:
    db.execute(
        update(UserSession)
        .where(UserSession.session_hash == digest(session_id), UserSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


def revoke_user_sessions(db: Session, user_id: int) -> None:
    db.execute(
        update(UserSession)
        .where(UserSession.user_id == user_id, UserSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )

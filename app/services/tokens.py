"""API tokens: shown once at creation, stored as SHA-256, revocable."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import ApiToken, User
from app.models.base import utcnow
from app.services.errors import NotFound
from app.services.security import digest, new_secret

TOKEN_PREFIX = "rlhf_"


def create_token(db: Session, user: User, name: str) -> tuple[ApiToken, str]:
    """Create a token for ``user``; returns the row and the plaintext (never stored)."""
    plaintext = TOKEN_PREFIX + new_secret(32)
    token = ApiToken(
        user_id=user.id, name=name or "token", token_hash=digest(plaintext), prefix=plaintext[:12]
    )
    db.add(token)
    db.flush()
    return token, plaintext


def resolve_token(db: Session, plaintext: str) -> User | None:
    """The active user owning a non-revoked token, or None."""
    row = db.execute(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == digest(plaintext))
    ).first()
    if row is None:
        return None
    token, user = row
    if token.revoked_at is not None or not user.is_active:
        return None
    now = utcnow()
    # Write last-used at most once a minute so the hot path stays read-only.
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        token.last_used_at = now
    return user


def list_tokens(db: Session, user_id: int | None = None) -> list[ApiToken]:
    query = select(ApiToken).order_by(ApiToken.id)
    if user_id is not None:
        query = query.where(ApiToken.user_id == user_id)
    return list(db.scalars(query))


def revoke_token(db: Session, token_id: int) -> ApiToken:
    token = db.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"token {token_id} not found")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    return token

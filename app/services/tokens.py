"""API tokens: shown once at creation, stored as SHA-256, revocable."""

from __future__ import annotations

from sqlalchemy import bindparam, select, update
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
    """The active user owning a non-revoked token, or None.

    On every API request, so it loads one ORM object (the user) and reads the token's
    columns as plain values; ``last_used_at`` is written at most once a minute, so the hot
    path stays read-only.
    """
    row = db.execute(_RESOLVE, {"token_hash": digest(plaintext)}).first()
    if row is None:
        return None
    user, token_id, revoked_at, last_used_at = row
    if revoked_at is not None or not user.is_active:
        return None
    now = utcnow()
    if last_used_at is None or (now - last_used_at).total_seconds() > 60:
        db.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))
    return user


_RESOLVE = (
    select(User, ApiToken.id, ApiToken.revoked_at, ApiToken.last_used_at)
    .join(ApiToken, ApiToken.user_id == User.id)
    .where(ApiToken.token_hash == bindparam("token_hash"))
)


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

"""Users: create, authenticate (with throttling), change role, disable, reset password."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.models import ROLES, LoginFailure, User
from app.models.base import utcnow
from app.services.errors import Conflict, Invalid, NotFound, Throttled
from app.services.security import hash_password, verify_password

MIN_PASSWORD = 8


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise Invalid(f"password must be at least {MIN_PASSWORD} characters")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}, not {role!r}")


def create_user(db: Session, username: str, password: str, role: str = "labeler") -> User:
    username = username.strip()
    if not username or len(username) > 64:
        raise Invalid("username must be 1 to 64 characters")
    _check_role(role)
    _check_password(password)
    if db.scalar(select(User.id).where(User.username == username)) is not None:
        raise Conflict(f"user {username!r} already exists")
    user = User(username=username, password_hash=hash_password(password), role=role)
    db.add(user)
    db.flush()
    return user


def get_user(db: Session, user_id: int) -> User:
    user = db.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return user


def get_by_username(db: Session, username: str) -> User | None:
    return db.scalar(select(User).where(User.username == username))


def list_users(db: Session) -> list[User]:
    return list(db.scalars(select(User).order_by(User.id)))


def update_user(
    db: Session,
    user: User,
    *,
    role: str | None = None,
    is_active: bool | None = None,
    password: str | None = None,
) -> User:
    if role is not None:
        _check_role(role)
        user.role = role
    if is_active is not None:
        user.is_active = is_active
    if password is not None:
        _check_password(password)
        user.password_hash = hash_password(password)
    if is_active is False or password is not None:
        from app.services.sessions import revoke_user_sessions

        revoke_user_sessions(db, user.id)
    db.flush()
    return user


def authenticate(
    db: Session,
    username: str,
    password: str,
    client: str,
    *,
    max_failures: int,
    window_s: int,
) -> User | None:
    """The active user with this password, or None. Raises Throttled after too many failures.

    Failures are counted per username and per client address within the window, so a
    wrong password, an unknown user and a disabled user all look the same to the caller.
    """
    since = utcnow() - timedelta(seconds=window_s)
    failures = db.scalar(
        select(func.count(LoginFailure.id)).where(
            LoginFailure.created_at >= since,
            (LoginFailure.username == username) | (LoginFailure.client == client),
        )
    )
    if failures is not None and failures >= max_failures:
        raise Throttled("too many failed logins; wait a few minutes and try again")
    user = get_by_username(db, username)
    ok = verify_password(password, user.password_hash if user else None)
    if not ok or user is None or not user.is_active:
        db.add(LoginFailure(username=username[:64], client=client[:64]))
        db.flush()
        return None
    db.execute(delete(LoginFailure).where(LoginFailure.username == username))
    user.last_active_at = utcnow()
    return user


def has_admin(db: Session) -> bool:
    return db.scalar(select(User.id).where(User.role == "admin").limit(1)) is not None

"""What an admin does to accounts: create users, change them, issue and revoke API tokens.

The JSON API (routes/api/users.py) and the People page (routes/pages/admin_people.py)
both call these, so the guards and the audit entries are written once, here: an admin
cannot disable themselves or change their own role (they would lock themselves out), and
every change is recorded as ``user.create``, ``user.update``, ``token.create`` or
``token.revoke``. The primitives without either (for the CLI and bootstrap, which have
no acting admin) are app/services/users.py and app/services/tokens.py.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.models import ApiToken, User
from app.services import audit, prompt_sets, tokens, users
from app.services.errors import Invalid

SELF_LOCKOUT = "you cannot disable yourself or change your own role; ask another admin"


def add_user(db: Session, actor: User, username: str, password: str, role: str = "labeler") -> User:
    user = users.create_user(db, username, password, role)
    audit.record(db, actor, "user.create", "user", user.id, username=user.username, role=user.role)
    return user


def change_user(
    db: Session,
    actor: User,
    user_id: int,
    *,
    role: str | None = None,
    is_active: bool | None = None,
    password: str | None = None,
) -> User:
    """Change a user's role, active flag or password (the given ones). Refuses to let
    ``actor`` disable themselves or change their own role."""
    user = users.get_user(db, user_id)
    if user.id == actor.id and (is_active is False or (role is not None and role != user.role)):
        raise Invalid(SELF_LOCKOUT)
    users.update_user(db, user, role=role, is_active=is_active, password=password)
    changed: dict[str, Any] = {
        key: value for key, value in (("role", role), ("is_active", is_active)) if value is not None
    }
    if password is not None:
        changed["password"] = "reset"
    audit.record(db, actor, "user.update", "user", user.id, **changed)
    return user


def issue_token(db: Session, actor: User, user_id: int, name: str) -> tuple[ApiToken, str]:
    """A new API token for the user: the row and the plaintext (shown once)."""
    user = users.get_user(db, user_id)
    token, plaintext = tokens.create_token(db, user, name)
    audit.record(db, actor, "token.create", "token", token.id, user_id=user.id, name=token.name)
    return token, plaintext


def revoke_token(db: Session, actor: User, token_id: int) -> ApiToken:
    token = tokens.revoke_token(db, token_id)
    audit.record(db, actor, "token.revoke", "token", token.id)
    return token


def people_view(db: Session) -> dict[str, Any]:
    """What the People page shows: users, their names by id, tokens, the sets to requeue in."""
    people = users.list_users(db)
    return {
        "people": people,
        "names": {u.id: u.username for u in people},
        "tokens": tokens.list_tokens(db),
        "sets": prompt_sets.list_prompt_sets(db),
    }

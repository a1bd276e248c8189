"""First-start set-up: an admin user (password printed once by the caller)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import User
from app.services import users
from app.services.security import generate_password

ADMIN_NAME = "admin"


def ensure_admin(db: Session) -> tuple[str, str | None]:
    """Create ``admin`` with a random password when no admin exists.

    Returns the admin's name and the new password, or None when one existed already.
    """
    existing = db.scalar(select(User).where(User.role == "admin").order_by(User.id).limit(1))
    if existing is not None:
        return existing.username, None
    password = generate_password()
    users.create_user(db, ADMIN_NAME, password, "admin")
    return ADMIN_NAME, password

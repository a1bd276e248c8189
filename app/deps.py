"""Request dependencies: database session, who is calling, and role checks.

Scripts authenticate with ``Authorization: Bearer <token>``; browsers with a signed
session cookie. Cookie-authenticated requests that change state must carry the
session's CSRF token (form field ``csrf_token`` or header ``X-CSRF-Token``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from itsdangerous import BadSignature, Signer
from sqlalchemy.orm import Session

from app.config import Settings
from app.models import User, UserSession
from app.services.security import same
from app.services.sessions import resolve_session
from app.services.tokens import resolve_token

SESSION_COOKIE = "rlhf_session"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


@dataclass
class Principal:
    user: User
    via: str  # "token" or "session"
    session: UserSession | None = None
    session_id: str | None = None

    @property
    def csrf_token(self) -> str:
        return self.session.csrf_token if self.session else ""


class LoginRequired(Exception):
    """Raised by page dependencies; answered with a redirect to the login page."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_db(request: Request) -> AsyncIterator[Session]:
    """A session per request. Routes commit explicitly before they answer.

    Async so that FastAPI runs it in the event loop instead of two trips through the
    thread pool (its setup and its teardown); each trip cost more CPU than the session
    itself (docs/benchmarks.md, "Labeling at scale"). Neither waits long: a new session
    holds no connection yet; closing one whose transaction the route committed hands the
    connection back without a round trip (psycopg skips the rollback of an idle one), and
    a read-only route's open transaction costs one ROLLBACK.
    """
    session = request.app.state.db.sessionmaker()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


DB = Annotated[Session, Depends(get_db)]


def cookie_signer(request: Request) -> Signer:
    return request.app.state.signer


def sign_session_id(request: Request, session_id: str) -> str:
    return cookie_signer(request).sign(session_id).decode()


def _session_from_cookie(request: Request, db: Session) -> Principal | None:
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    try:
        session_id = cookie_signer(request).unsign(raw).decode()
    except BadSignature:
        return None
    found = resolve_session(db, session_id)
    if found is None:
        return None
    sess, user = found
    return Principal(user=user, via="session", session=sess, session_id=session_id)


def optional_principal(request: Request, db: DB) -> Principal | None:
    """Whoever is calling, or None. A bad bearer token is never silently ignored."""
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise HTTPException(401, "invalid credentials", headers={"WWW-Authenticate": "Bearer"})
        user = resolve_token(db, value.strip())
        if user is None:
            raise HTTPException(401, "invalid credentials", headers={"WWW-Authenticate": "Bearer"})
        db.commit()  # last_used_at
        return Principal(user=user, via="token")
    return _session_from_cookie(request, db)


def _check_api_csrf(request: Request, principal: Principal) -> None:
    if principal.via != "session" or request.method in SAFE_METHODS:
        return
    sent = request.headers.get("x-csrf-token", "")
    if not sent or not same(sent, principal.csrf_token):
        raise HTTPException(403, "missing or invalid CSRF token (send the X-CSRF-Token header)")


async def api_user(
    request: Request, principal: Annotated[Principal | None, Depends(optional_principal)]
) -> Principal:
    """The authenticated caller (401 otherwise). This and the other role checks are async:
    they only read what optional_principal loaded, so they run in the event loop instead
    of taking a trip through the thread pool each."""
    if principal is None:
        raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
    _check_api_csrf(request, principal)
    return principal


async def api_admin(principal: Annotated[Principal, Depends(api_user)]) -> Principal:
    if not principal.user.is_admin:
        raise HTTPException(403, "admin role required")
    return principal


async def page_user(
    request: Request, principal: Annotated[Principal | None, Depends(optional_principal)]
) -> Principal:
    if principal is None:
        raise LoginRequired(request.url.path)
    return principal


async def page_admin(principal: Annotated[Principal, Depends(page_user)]) -> Principal:
    if not principal.user.is_admin:
        raise HTTPException(403, "admin role required")
    return principal


async def verify_form_csrf(request: Request, principal: Principal) -> None:
    """Check the ``csrf_token`` field of a form post against the session's token."""
    form = await request.form()
    sent = str(form.get("csrf_token") or request.headers.get("x-csrf-token") or "")
    if principal.via == "session" and (not sent or not same(sent, principal.csrf_token)):
        raise HTTPException(403, "missing or invalid CSRF token; reload the page and try again")


ApiUser = Annotated[Principal, Depends(api_user)]
ApiAdmin = Annotated[Principal, Depends(api_admin)]
PageUser = Annotated[Principal, Depends(page_user)]
PageAdmin = Annotated[Principal, Depends(page_admin)]

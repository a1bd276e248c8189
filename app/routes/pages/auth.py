"""Login, logout and the home redirect."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.deps import (
    DB,
    SESSION_COOKIE,
    PageUser,
    Principal,
    optional_principal,
    sign_session_id,
    verify_form_csrf,
)
from app.services import sessions, users
from app.services.errors import Throttled
from app.templating import render

router = APIRouter(include_in_schema=False)


def _safe_next(next_url: str | None, default: str) -> str:
    """Only same-site absolute paths; never an open redirect."""
    if next_url and next_url.startswith("/") and not next_url.startswith("//") and "\\" not in next_url:
        return next_url
    return default


def _home_for(principal: Principal) -> str:
    return "/admin" if principal.user.is_admin else "/label"


@router.get("/", response_class=HTMLResponse)
def home(principal: Annotated[Principal | None, Depends(optional_principal)]) -> Response:
    if principal is None:
        return RedirectResponse("/login", status_code=303)
    return RedirectResponse(_home_for(principal), status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None) -> Response:
    return render(request, "login.html", next=_safe_next(next, ""), error=None)


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    db: DB,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=256)],
    next: Annotated[str, Form()] = "",
) -> Response:
    """Logins need no CSRF token (there is no session yet); SameSite=Lax covers login CSRF."""
    settings = request.app.state.settings
    client = request.client.host if request.client else "unknown"
    try:
        user = users.authenticate(
            db,
            username,
            password,
            client,
            max_failures=settings.login_max_failures,
            window_s=settings.login_window_s,
        )
    except Throttled as exc:
        db.commit()
        return render(request, "login.html", next=next, error=exc.message, status_code=429)
    if user is None:
        db.commit()  # keep the failure for throttling
        return render(
            request, "login.html", next=next, error="Invalid username or password.", status_code=401
        )
    # A fresh session id at every login; an old cookie from before is revoked (no fixation).
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        try:
            sessions.revoke_session(db, request.app.state.signer.unsign(old).decode())
        except Exception:  # a tampered cookie has nothing to revoke
            pass
    session_id, _ = sessions.create_session(db, user, settings.session_max_age_s)
    db.commit()
    target = _safe_next(next, "/admin" if user.is_admin else "/label")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        sign_session_id(request, session_id),
        max_age=settings.session_max_age_s,
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
        path="/",
    )
    return response


@router.post("/logout")
async def logout(request: Request, db: DB, principal: PageUser) -> Response:
    await verify_form_csrf(request, principal)
    if principal.session_id:
        sessions.revoke_session(db, principal.session_id)
        db.commit()
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response

"""Admin pages for people: accounts and tokens, labeler quality (with requeue), the audit log.

Forms post back to the page's own URL; app/routes/pages/forms.py maps each ``action`` to
its handler below. Each handler calls one service (app/services/people.py for accounts,
app/services/requeue.py), which checks its guards and writes the audit entry.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app.deps import DB, PageAdmin
from app.routes.pages.forms import PageCall, PageForms
from app.services import admin_views, audit_view, people, prompt_sets, requeue, users
from app.services.errors import Invalid

router = APIRouter(include_in_schema=False)


def _requeue(call: PageCall) -> dict[str, Any]:
    """Send a labeler's rankings (in one set, or all; demonstrations too if asked) back."""
    user_id = call.integer("user_id", "user")
    if user_id is None:
        raise Invalid("choose a labeler")
    set_id = call.integer("prompt_set_id", "prompt set")
    if set_id is not None:
        prompt_sets.get_prompt_set(call.db, set_id)
    result = requeue.requeue_labeler(
        call.db, call.actor, user_id, set_id, include_demonstrations=call.text("include_demonstrations") == "on"
    )
    who = users.get_user(call.db, user_id).username
    return {
        "notice": f"Requeued {result.rankings} ranking(s) and {result.demonstrations} demonstration(s) of {who}; "
        f"{result.tasks} slot(s) are open again."
    }


# ---------------------------------------------------------------- people


def _people_page(call: PageCall, status: int = 200, **ctx: Any) -> HTMLResponse:
    return call.show("admin/people.html", status, **people.people_view(call.db), **ctx)


PEOPLE = PageForms(_people_page)
PEOPLE.action("requeue")(_requeue)


@PEOPLE.action("create_user")
def _create_user(call: PageCall) -> dict[str, Any]:
    user = people.add_user(
        call.db, call.actor, call.text("username"), call.raw("password"), call.text("role") or "labeler"
    )
    return {"notice": f"Created {user.role} {user.username}."}


def _change_user(call: PageCall, done: str, **change: Any) -> dict[str, Any]:
    user = people.change_user(call.db, call.actor, call.id("user_id"), **change)
    return {"notice": f"{user.username} {done.format(user=user)}."}


@PEOPLE.action("set_role")
def _set_role(call: PageCall) -> dict[str, Any]:
    return _change_user(call, "is now {user.role}", role=call.text("role"))


@PEOPLE.action("disable")
def _disable(call: PageCall) -> dict[str, Any]:
    return _change_user(call, "is disabled", is_active=False)


@PEOPLE.action("enable")
def _enable(call: PageCall) -> dict[str, Any]:
    return _change_user(call, "is enabled again", is_active=True)


@PEOPLE.action("reset_password")
def _reset_password(call: PageCall) -> dict[str, Any]:
    return _change_user(call, "has a new password (their sessions were logged out)", password=call.raw("password"))


@PEOPLE.action("create_token")
def _create_token(call: PageCall) -> dict[str, Any]:
    token, plaintext = people.issue_token(call.db, call.actor, call.id("user_id"), call.text("name") or "api")
    return {"new_token": plaintext, "token_owner": token.user.username}


@PEOPLE.action("revoke_token")
def _revoke_token(call: PageCall) -> dict[str, Any]:
    token = people.revoke_token(call.db, call.actor, call.id("token_id"))
    return {"notice": f"Revoked token {token.prefix}…"}


@router.get("/admin/people", response_class=HTMLResponse)
def people_page(request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    return _people_page(PageCall(request, db, principal))


@router.post("/admin/people", response_class=HTMLResponse)
async def people_post(request: Request, db: DB, principal: PageAdmin) -> Response:
    return await PEOPLE.handle(PageCall(request, db, principal))


# ---------------------------------------------------------------- quality


def _quality_page(call: PageCall, status: int = 200, **ctx: Any) -> HTMLResponse:
    raw = call.request.query_params.get("prompt_set_id", "")
    view = admin_views.quality(call.db, int(raw) if raw.isdigit() else None)
    return call.show("admin/quality.html", status, **view, **ctx)


QUALITY = PageForms(_quality_page)
QUALITY.action("requeue")(_requeue)


@router.get("/admin/quality", response_class=HTMLResponse)
def quality_page(request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    return _quality_page(PageCall(request, db, principal))


@router.post("/admin/quality", response_class=HTMLResponse)
async def quality_post(request: Request, db: DB, principal: PageAdmin) -> Response:
    return await QUALITY.handle(PageCall(request, db, principal))


# ---------------------------------------------------------------- audit log


@router.get("/admin/audit", response_class=HTMLResponse)
def audit_page(request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    params = request.query_params
    before = params.get("before_id", "")
    view = audit_view.page(
        db,
        action=(params.get("action") or "").strip()[:64] or None,
        actor=(params.get("actor") or "").strip()[:64] or None,
        before_id=int(before) if before.isdigit() else None,
    )
    return PageCall(request, db, principal).show("admin/audit.html", **view)

"""Evaluation pages: the labeler's blind compare page and the admin's evaluations and
leaderboard pages.

The compare page is a shell like the rank page: static/label/compare.js claims compare
tasks and submits judgments through the JSON API. Nothing on it names a policy: its title
is "Evaluation N" (an admin's evaluation name may mention versions), and the task JSON holds
only the prompt and the texts of sides A and B.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from starlette.datastructures import FormData

from app.deps import DB, PageAdmin, PageUser, Principal, verify_form_csrf
from app.models import Policy, PromptSet
from app.routes.pages.label import _page_config
from app.services import compare_tasks, evaluations
from app.services.errors import Invalid, ServiceError
from app.templating import render

router = APIRouter(include_in_schema=False)


# --- labeler ----------------------------------------------------------------------------


@router.get("/label/evaluations", response_class=HTMLResponse)
def label_evaluations(request: Request, db: DB, principal: PageUser) -> HTMLResponse:
    """Active evaluations with this labeler's counts (no names: they may name policies)."""
    rows = [
        (ev, compare_tasks.progress(db, principal.user, ev.id))
        for ev in evaluations.list_evaluations(db)
        if ev.status == "active"
    ]
    return render(request, "label/evaluations.html", principal, rows=rows)


@router.get("/label/evaluations/{evaluation_id}/compare", response_class=HTMLResponse)
def compare_page(request: Request, evaluation_id: int, db: DB, principal: PageUser) -> HTMLResponse:
    ev = evaluations.get_evaluation(db, evaluation_id)
    config = {
        **_page_config(request, "compare", 0),
        "promptSetId": f"evaluation-{ev.id}",  # the key of drafts and the guidelines' state
        "evaluationId": ev.id,
    }
    shell = SimpleNamespace(
        name=f"Evaluation {ev.id}", guidelines=ev.guidelines, status="active" if ev.status == "active" else "paused"
    )
    return render(request, "label/compare.html", principal, ps=shell, config=config)


# --- admin ------------------------------------------------------------------------------


def _ints(form: FormData, name: str) -> list[int]:
    out = []
    for raw in form.getlist(name):
        try:
            out.append(int(str(raw)))
        except ValueError as exc:
            raise Invalid(f"{name} must be ids, not {raw!r}") from exc
    return out


def _int(form: FormData, name: str, default: int | None) -> int | None:
    raw = str(form.get(name) or "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise Invalid(f"{name.replace('_', ' ')} must be a whole number, not {raw!r}") from exc


def _list_page(
    request: Request, db: DB, principal: Principal, status: int = 200, **ctx: Any
) -> HTMLResponse:
    return render(
        request,
        "admin/evaluations.html",
        principal,
        status_code=status,
        evaluations=[evaluations.evaluation_view(db, ev) for ev in evaluations.list_evaluations(db)],
        policies=list(db.scalars(select(Policy).where(Policy.status == "ready").order_by(Policy.version.desc()))),
        prompt_sets=list(db.scalars(select(PromptSet).order_by(PromptSet.name))),
        **ctx,
    )


@router.get("/admin/evaluations", response_class=HTMLResponse)
def evaluations_page(request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    return _list_page(request, db, principal)


@router.post("/admin/evaluations", response_class=HTMLResponse)
async def evaluations_post(request: Request, db: DB, principal: PageAdmin) -> Response:
    await verify_form_csrf(request, principal)
    form = await request.form()
    try:
        if form.get("action") != "create":
            raise Invalid("unknown action")
        ev = evaluations.create_evaluation(
            db,
            principal.user,
            name=str(form.get("name") or ""),
            policy_ids=_ints(form, "policy_ids"),
            prompt_set_ids=_ints(form, "prompt_set_ids"),
            split=str(form.get("split") or "validation"),
            per_pair=_int(form, "per_pair", 1) or 1,
            overlap=_int(form, "overlap", 1) or 1,
            max_prompts=_int(form, "max_prompts", None),
            guidelines=str(form.get("guidelines") or ""),
        )
        db.commit()
        return RedirectResponse(f"/admin/evaluations/{ev.id}", status_code=303)
    except ServiceError as exc:
        db.rollback()
        return _list_page(request, db, principal, exc.status_code, error=exc.message, values=form)


def _detail_page(
    request: Request, db: DB, principal: Principal, evaluation_id: int, status: int = 200, **ctx: Any
) -> HTMLResponse:
    ev = evaluations.get_evaluation(db, evaluation_id)
    return render(
        request,
        "admin/evaluation.html",
        principal,
        status_code=status,
        ev=evaluations.evaluation_view(db, ev),
        board=evaluations.leaderboard_view(db, ev),
        **ctx,
    )


@router.get("/admin/evaluations/{evaluation_id}", response_class=HTMLResponse)
def evaluation_page(request: Request, evaluation_id: int, db: DB, principal: PageAdmin) -> HTMLResponse:
    return _detail_page(request, db, principal, evaluation_id)


@router.post("/admin/evaluations/{evaluation_id}", response_class=HTMLResponse)
async def evaluation_post(request: Request, evaluation_id: int, db: DB, principal: PageAdmin) -> Response:
    await verify_form_csrf(request, principal)
    form = await request.form()
    try:
        if form.get("action") != "status":
            raise Invalid("unknown action")
        ev = evaluations.get_evaluation(db, evaluation_id, lock=True)
        evaluations.set_status(db, principal.user, ev, str(form.get("status") or ""))
        db.commit()
        return _detail_page(request, db, principal, evaluation_id, notice=f"The evaluation is {ev.status}.")
    except ServiceError as exc:
        db.rollback()
        return _detail_page(request, db, principal, evaluation_id, exc.status_code, error=exc.message)

"""Admin dashboard pages (server-rendered; every form POST checks the CSRF token).

This module: the dashboard, training runs and policies. The data pages (prompt sets,
prompts) are in admin_sets.py, the people pages (people, quality, audit log) in
admin_people.py. Forms post back to the page's own URL with an ``action`` field, so after
a form the browser stays on the page it was on; app/routes/pages/forms.py maps each
action to one handler. Handlers call the same services as the JSON API (and so write the
same audit entries); the view models come from app/services/admin_views.py; live parts
(runs, charts) poll the JSON API.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from app.deps import DB, PageAdmin, Principal, verify_form_csrf
from app.models import TrainingRun, User
from app.models.training import DEFAULT_STAGES, STAGES
from app.routes.pages.forms import PageCall, PageForms
from app.routes.pages.forms import form_text as _text
from app.services import admin_views, policies, prompt_sets, training
from app.services.errors import Invalid, ServiceError
from app.templating import render

router = APIRouter(include_in_schema=False)


def _page(request: Request, principal: Principal, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    return render(request, template, principal, status_code=status, **ctx)


# ---------------------------------------------------------------- dashboard


@router.get("/admin", response_class=HTMLResponse)
def dashboard(request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    view = admin_views.dashboard(db, request.app.state.settings.heartbeat_timeout_s)
    return _page(request, principal, "admin/index.html", **view)


# ---------------------------------------------------------------- runs and policies


def _runs_page(request: Request, db: Session, principal: Principal, status: int = 200, **ctx: Any) -> HTMLResponse:
    return _page(
        request, principal, "admin/runs.html", status,
        runs=training.list_runs(db, 50),
        sets=prompt_sets.list_prompt_sets(db, ("active", "paused")),
        set_names={ps.id: ps.name for ps in prompt_sets.list_prompt_sets(db)},
        versions={p.id: p.version for p in policies.list_policies(db)},
        stages=STAGES,
        config_keys=list(training.ROUND_CONFIG.values()),
        **{"chosen_sets": [], "chosen_stages": list(DEFAULT_STAGES), "deploy_checked": False, "config_text": "", **ctx},
    )


@router.get("/admin/runs", response_class=HTMLResponse)
def runs_page(request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    return _runs_page(request, db, principal)


@router.post("/admin/runs", response_class=HTMLResponse)
async def runs_post(request: Request, db: DB, principal: PageAdmin) -> Response:
    """The "Start training round" form: the same service call as POST /api/v1/training/rounds."""
    await verify_form_csrf(request, principal)
    form = await request.form()
    set_ids = [int(v) for v in form.getlist("prompt_set_ids") if isinstance(v, str) and v.isdigit()]
    stages = [v for v in form.getlist("stages") if isinstance(v, str)]
    try:
        raw_config = str(form.get("config") or "").strip()
        try:
            config = json.loads(raw_config) if raw_config else None
        except json.JSONDecodeError as exc:
            raise Invalid(f"config is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from exc
        if config is not None and not isinstance(config, dict):
            raise Invalid('config must be a JSON object like {"ppo_iterations": 16}')
        run = training.create_round(
            db, principal.user, set_ids, stages=stages, deploy=_text(form, "deploy") == "on", config=config
        )
        db.commit()
    except ServiceError as exc:
        db.rollback()
        return _runs_page(
            request, db, principal, exc.status_code, error=exc.message,
            chosen_sets=set_ids, chosen_stages=stages, deploy_checked=_text(form, "deploy") == "on",
            config_text=str(form.get("config") or ""),
        )
    return RedirectResponse(f"/admin/runs/{run.id}", status_code=303)


def _run_page(request: Request, db: Session, principal: Principal, run: TrainingRun, status: int = 200, **ctx: Any) -> HTMLResponse:
    linked = {pid: policies.get_policy(db, pid) for pid in (run.base_policy_id, run.policy_id) if pid is not None}
    return _page(
        request, principal, "admin/run.html", status,
        run=run, snapshot=training.snapshot_summary(run), linked=linked,
        set_names={ps.id: ps.name for ps in prompt_sets.list_prompt_sets(db)},
        creator=db.get(User, run.created_by_id) if run.created_by_id else None,
        logs=training.run_logs(db, run.id, 200), finished=run.status in training.FINISHED,
        **ctx,
    )


@router.get("/admin/runs/{run_id}", response_class=HTMLResponse)
def run_page(run_id: int, request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    return _run_page(request, db, principal, training.get_run(db, run_id))


@router.post("/admin/runs/{run_id}", response_class=HTMLResponse)
async def run_post(run_id: int, request: Request, db: DB, principal: PageAdmin) -> Response:
    await verify_form_csrf(request, principal)
    form = await request.form()
    try:
        if _text(form, "action") != "cancel":
            raise Invalid("unknown action")
        run = training.cancel_run(db, principal.user, run_id)
        db.commit()
        return _run_page(request, db, principal, run, notice="Cancel requested.")
    except ServiceError as exc:
        db.rollback()
        return _run_page(request, db, principal, training.get_run(db, run_id), exc.status_code, error=exc.message)


def _policies_page(call: PageCall, status: int = 200, **ctx: Any) -> HTMLResponse:
    return call.show("admin/policies.html", status, **admin_views.policies_page(call.db), **ctx)


POLICIES = PageForms(_policies_page)


@POLICIES.action("deploy")
def _deploy(call: PageCall) -> dict[str, Any]:
    policy = policies.deploy_policy(call.db, call.actor, call.integer("policy_id", "policy") or 0)
    return {"notice": f"Policy v{policy.version} is deployed; samplers switch to it within seconds."}


@router.get("/admin/policies", response_class=HTMLResponse)
def policies_page(request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    return _policies_page(PageCall(request, db, principal))


@router.post("/admin/policies", response_class=HTMLResponse)
async def policies_post(request: Request, db: DB, principal: PageAdmin) -> Response:
    return await POLICIES.handle(PageCall(request, db, principal))

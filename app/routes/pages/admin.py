"""Admin dashboard pages (server-rendered; every form POST checks the CSRF token).

Each page has one POST handler at its own URL with an ``action`` field, so after a form
the browser stays on the page it was on. Handlers call the same services as the JSON API
(and so write the same audit entries); live parts (runs, charts) poll the JSON API.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.datastructures import FormData, UploadFile

from app.deps import DB, PageAdmin, Principal, verify_form_csrf
from app.models import Completion, Policy, Prompt, PromptSet, TrainingRun, User
from app.models.prompts import PROMPT_SET_STATUSES
from app.models.training import DEFAULT_STAGES, STAGES
from app.services import (
    audit,
    audit_view,
    exports,
    gold,
    imports,
    policies,
    prompt_sets,
    requeue,
    stats,
    tokens,
    training,
    users,
    workers,
)
from app.services.errors import Invalid, ServiceError
from app.templating import render

router = APIRouter(include_in_schema=False)


# ---------------------------------------------------------------- helpers


def _text(form: FormData, name: str, default: str = "") -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else default


def _int(form: FormData, name: str, label: str | None = None) -> int | None:
    raw = _text(form, name)
    if raw == "":
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise Invalid(f"{label or name} must be a whole number, not {raw!r}") from exc


def _float(form: FormData, name: str, label: str | None = None) -> float | None:
    raw = _text(form, name)
    if raw == "":
        return None
    try:
        return float(raw)
    except ValueError as exc:
        raise Invalid(f"{label or name} must be a number, not {raw!r}") from exc


def _set_fields(form: FormData) -> dict[str, Any]:
    """The editable prompt set fields of the create/edit form."""
    fields: dict[str, Any] = {
        "name": _text(form, "name"),
        "description": form.get("description") or "",
        "guidelines": form.get("guidelines") or "",
        "k": _int(form, "k", "K"),
        "overlap": _int(form, "overlap", "overlap"),
        "demonstration_share": _float(form, "demonstration_share", "demonstration share"),
        "status": _text(form, "status") or None,
    }
    sampling = {
        key: value
        for key, value in (
            ("temperature", _float(form, "temperature", "temperature")),
            ("top_p", _float(form, "top_p", "top_p")),
            ("max_new_tokens", _int(form, "max_new_tokens", "max new tokens")),
        )
        if value is not None
    }
    if sampling:
        fields["sampling"] = sampling
    return {k: v for k, v in fields.items() if v is not None}


def _page(request: Request, principal: Principal, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    return render(request, template, principal, status_code=status, **ctx)


# ---------------------------------------------------------------- dashboard


@router.get("/admin", response_class=HTMLResponse)
def dashboard(request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    settings = request.app.state.settings
    progress = stats.progress(db)
    sets = {ps.id: ps for ps in prompt_sets.list_prompt_sets(db)}
    all_workers = workers.list_workers(db)
    alive = [w for w in all_workers if workers.is_alive(w, settings.heartbeat_timeout_s)]
    labelers, agreement = stats.labeler_stats(db)
    return _page(
        request, principal, "admin/index.html",
        progress=[p for p in progress if sets[p.prompt_set_id].status != "archived"],
        deployed=policies.deployed_policy(db),
        policy_count=db.scalar(select(func.count(Policy.id))) or 0,
        workers=all_workers,
        alive_ids={w.id for w in alive},
        runs=training.list_runs(db, 6),
        agreement=agreement,
        labeler_count=sum(1 for s in labelers if s.role == "labeler" and s.is_active),
        submissions=sum(s.submissions for s in labelers),
        recent=audit_view.list_entries(db, limit=6),
    )


# ---------------------------------------------------------------- prompt sets


def _sets_page(request: Request, db: Session, principal: Principal, status: int = 200, **ctx: Any) -> HTMLResponse:
    progress = {p.prompt_set_id: p for p in stats.progress(db)}
    return _page(
        request, principal, "admin/prompt_sets.html", status,
        sets=prompt_sets.list_prompt_sets(db), progress=progress, statuses=PROMPT_SET_STATUSES, **ctx,
    )


@router.get("/admin/prompt-sets", response_class=HTMLResponse)
def prompt_sets_page(request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    return _sets_page(request, db, principal, form={})


@router.post("/admin/prompt-sets", response_class=HTMLResponse)
async def prompt_sets_post(request: Request, db: DB, principal: PageAdmin) -> Response:
    await verify_form_csrf(request, principal)
    form = await request.form()
    try:
        ps = prompt_sets.create_prompt_set(db, principal.user, **_set_fields(form))
        db.commit()
    except ServiceError as exc:
        db.rollback()
        return _sets_page(request, db, principal, exc.status_code, error=exc.message, form=dict(form))
    return RedirectResponse(f"/admin/prompt-sets/{ps.id}?created=1", status_code=303)


PROMPTS_PER_PAGE = 25


def _set_page(
    request: Request, db: Session, principal: Principal, ps: PromptSet, status: int = 200, **ctx: Any
) -> HTMLResponse:
    params = request.query_params
    split = params.get("split") if params.get("split") in ("train", "validation") else None
    q = (params.get("q") or "").strip()[:200] or None
    page = max(int(params.get("page", "1")) if params.get("page", "1").isdigit() else 1, 1)
    shown = prompt_sets.list_prompts(
        db, ps.id, split=split, search=q, limit=PROMPTS_PER_PAGE + 1, offset=(page - 1) * PROMPTS_PER_PAGE
    )
    ready_counts = dict(
        db.execute(
            select(Completion.prompt_id, func.count(Completion.id))
            .where(Completion.prompt_id.in_([p.id for p in shown]), Completion.status == "ready")
            .group_by(Completion.prompt_id)
        ).all()
    ) if shown else {}
    (progress,) = stats.progress(db, ps.id) or [stats.SetProgress(ps.id, ps.name, ps.status, ps.k, ps.overlap)]
    return _page(
        request, principal, "admin/prompt_set.html", status,
        ps=ps, progress=progress, statuses=PROMPT_SET_STATUSES,
        prompts=shown[:PROMPTS_PER_PAGE], has_more=len(shown) > PROMPTS_PER_PAGE, page=page,
        split=split, q=q or "", ready_counts=ready_counts,
        gold_prompts=prompt_sets.list_prompts(db, ps.id, gold=True, limit=100),
        export_kinds=exports.KINDS,
        max_upload_mb=request.app.state.settings.max_upload_bytes / 1_048_576,
        created=params.get("created") == "1",
        **ctx,
    )


@router.get("/admin/prompt-sets/{prompt_set_id}", response_class=HTMLResponse)
def prompt_set_page(prompt_set_id: int, request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    return _set_page(request, db, principal, prompt_sets.get_prompt_set(db, prompt_set_id))


async def _import_upload(request: Request, db: Session, principal: Principal, ps: PromptSet, form: FormData) -> dict[str, Any]:
    settings = request.app.state.settings
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise Invalid("choose a .jsonl or .csv file to upload")
    data = await upload.read(settings.max_upload_bytes + 1)
    imports.check_size(len(data) if len(data) > settings.max_upload_bytes else None, settings.max_upload_bytes)
    fmt = imports.detect_format(upload.filename, upload.content_type, data)

    def work() -> imports.ImportResult:
        rows = imports.parse_file(data, fmt)
        result = imports.import_rows(
            db, ps, rows, validation_fraction=settings.validation_fraction, actor=principal.user,
            source=f"dashboard:{upload.filename}",
        )
        db.commit()
        return result

    result = await run_in_threadpool(work)
    return {"import_result": result, "import_file": upload.filename}


@router.post("/admin/prompt-sets/{prompt_set_id}", response_class=HTMLResponse)
async def prompt_set_post(prompt_set_id: int, request: Request, db: DB, principal: PageAdmin) -> Response:
    length = request.headers.get("content-length", "")
    limit = request.app.state.settings.max_upload_bytes
    if length.isdigit() and int(length) > limit + 64 * 1024:  # the file plus the form's other fields
        # Answered before the body is read (so before its CSRF field can be); it changes nothing.
        return _set_page(
            request, db, principal, prompt_sets.get_prompt_set(db, prompt_set_id), 413,
            import_error=f"the upload is over the limit of {limit} bytes (RLHF_MAX_UPLOAD_BYTES)",
        )
    await verify_form_csrf(request, principal)
    ps = prompt_sets.get_prompt_set(db, prompt_set_id)
    form = await request.form()
    action = _text(form, "action")
    try:
        if action == "save":
            prompt_sets.update_prompt_set(db, principal.user, ps, **_set_fields(form))
            db.commit()
            return _set_page(request, db, principal, ps, notice="Saved.")
        if action == "import":
            try:
                ctx = await _import_upload(request, db, principal, ps, form)
            except imports.ImportFailed as exc:
                return _set_page(request, db, principal, ps, 422, import_failed=exc)
            except ServiceError as exc:
                db.rollback()
                return _set_page(request, db, principal, ps, exc.status_code, import_error=exc.message)
            return _set_page(request, db, principal, ps, **ctx)
        raise Invalid(f"unknown action {action!r}")
    except ServiceError as exc:
        db.rollback()
        db.refresh(ps)
        return _set_page(request, db, principal, ps, exc.status_code, error=exc.message, form=dict(form))


# ---------------------------------------------------------------- one prompt (gold)


def _prompt_page(request: Request, db: Session, principal: Principal, prompt: Prompt, status: int = 200, **ctx: Any) -> HTMLResponse:
    rows = db.execute(
        select(Completion, Policy.version)
        .join(Policy, Policy.id == Completion.policy_id)
        .where(Completion.prompt_id == prompt.id)
        .order_by(Completion.status, Policy.version.desc(), Completion.id)
    ).all()
    gold_pos = stats.positions(prompt.gold_ranking or [])
    return _page(
        request, principal, "admin/prompt.html", status,
        prompt=prompt, ps=prompt.prompt_set, completions=rows, gold_pos=gold_pos, **ctx,
    )


@router.get("/admin/prompts/{prompt_id}", response_class=HTMLResponse)
def prompt_page(prompt_id: int, request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    return _prompt_page(request, db, principal, prompt_sets.get_prompt(db, prompt_id))


@router.post("/admin/prompts/{prompt_id}", response_class=HTMLResponse)
async def prompt_post(prompt_id: int, request: Request, db: DB, principal: PageAdmin) -> Response:
    await verify_form_csrf(request, principal)
    form = await request.form()
    prompt = prompt_sets.get_prompt(db, prompt_id)
    action = _text(form, "action")
    try:
        if action == "set_gold":
            places: dict[int, list[int]] = defaultdict(list)
            for key in form:
                if key.startswith("rank_") and _text(form, key):
                    place = _int(form, key, "rank")
                    places[place or 0].append(int(key.removeprefix("rank_")))
            ranking = [sorted(places[p]) for p in sorted(places)]
            gold.set_gold(db, principal.user, prompt, ranking)
            db.commit()
            return _prompt_page(request, db, principal, prompt, notice="Gold ranking saved.")
        if action == "clear_gold":
            gold.clear_gold(db, principal.user, prompt)
            db.commit()
            return _prompt_page(request, db, principal, prompt, notice="No longer a gold prompt.")
        raise Invalid(f"unknown action {action!r}")
    except ServiceError as exc:
        db.rollback()
        db.refresh(prompt)
        return _prompt_page(request, db, principal, prompt, exc.status_code, error=exc.message)


# ---------------------------------------------------------------- people


def _people_page(request: Request, db: Session, principal: Principal, status: int = 200, **ctx: Any) -> HTMLResponse:
    people = users.list_users(db)
    names = {u.id: u.username for u in people}
    return _page(
        request, principal, "admin/people.html", status,
        people=people, names=names, tokens=tokens.list_tokens(db),
        sets=prompt_sets.list_prompt_sets(db), **ctx,
    )


@router.get("/admin/people", response_class=HTMLResponse)
def people_page(request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    return _people_page(request, db, principal)


def _requeue(db: Session, principal: Principal, form: FormData) -> str:
    user_id = _int(form, "user_id", "user")
    if user_id is None:
        raise Invalid("choose a labeler")
    set_id = _int(form, "prompt_set_id", "prompt set")
    if set_id is not None:
        prompt_sets.get_prompt_set(db, set_id)
    result = requeue.requeue_labeler(
        db, principal.user, user_id, set_id, include_demonstrations=_text(form, "include_demonstrations") == "on"
    )
    db.commit()
    who = users.get_user(db, user_id).username
    return (
        f"Requeued {result.rankings} ranking(s) and {result.demonstrations} demonstration(s) of {who}; "
        f"{result.tasks} slot(s) are open again."
    )


@router.post("/admin/people", response_class=HTMLResponse)
async def people_post(request: Request, db: DB, principal: PageAdmin) -> Response:
    await verify_form_csrf(request, principal)
    form = await request.form()
    action = _text(form, "action")
    me = principal.user
    try:
        if action == "create_user":
            user = users.create_user(db, _text(form, "username"), str(form.get("password") or ""), _text(form, "role") or "labeler")
            audit.record(db, me, "user.create", "user", user.id, username=user.username, role=user.role)
            db.commit()
            return _people_page(request, db, principal, notice=f"Created {user.role} {user.username}.")
        if action == "create_token":
            user = users.get_user(db, _int(form, "user_id") or 0)
            token, plaintext = tokens.create_token(db, user, _text(form, "name") or "api")
            audit.record(db, me, "token.create", "token", token.id, user_id=user.id, name=token.name)
            db.commit()
            return _people_page(request, db, principal, new_token=plaintext, token_owner=user.username)
        if action == "revoke_token":
            token = tokens.revoke_token(db, _int(form, "token_id") or 0)
            audit.record(db, me, "token.revoke", "token", token.id)
            db.commit()
            return _people_page(request, db, principal, notice=f"Revoked token {token.prefix}…")
        if action == "requeue":
            return _people_page(request, db, principal, notice=_requeue(db, principal, form))
        if action in ("set_role", "disable", "enable", "reset_password"):
            user = users.get_user(db, _int(form, "user_id") or 0)
            if user.id == me.id and action in ("disable", "set_role"):
                raise Invalid("you cannot disable yourself or change your own role here")
            changes: dict[str, Any] = {}
            if action == "set_role":
                changes["role"] = _text(form, "role")
            elif action in ("disable", "enable"):
                changes["is_active"] = action == "enable"
            else:
                changes["password"] = str(form.get("password") or "")
            users.update_user(db, user, **changes)
            if "password" in changes:
                changes["password"] = "reset"
            audit.record(db, me, "user.update", "user", user.id, **changes)
            db.commit()
            verb = {"set_role": f"is now {user.role}", "disable": "is disabled", "enable": "is enabled again",
                    "reset_password": "has a new password (their sessions were logged out)"}[action]
            return _people_page(request, db, principal, notice=f"{user.username} {verb}.")
        raise Invalid(f"unknown action {action!r}")
    except ServiceError as exc:
        db.rollback()
        return _people_page(request, db, principal, exc.status_code, error=exc.message, form=dict(form))


# ---------------------------------------------------------------- quality


def _quality_page(request: Request, db: Session, principal: Principal, status: int = 200, **ctx: Any) -> HTMLResponse:
    raw = request.query_params.get("prompt_set_id", "")
    set_id = int(raw) if raw.isdigit() else None
    if set_id is not None:
        prompt_sets.get_prompt_set(db, set_id)
    labelers, agreement = stats.labeler_stats(db, set_id)
    gold_values = [s.gold_accuracy for s in labelers if s.gold_accuracy is not None]
    return _page(
        request, principal, "admin/quality.html", status,
        labelers=labelers, agreement=agreement, sets=prompt_sets.list_prompt_sets(db), set_id=set_id,
        gold_median=sorted(gold_values)[len(gold_values) // 2] if gold_values else None,
        progress=stats.progress(db, set_id), **ctx,
    )


@router.get("/admin/quality", response_class=HTMLResponse)
def quality_page(request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    return _quality_page(request, db, principal)


@router.post("/admin/quality", response_class=HTMLResponse)
async def quality_post(request: Request, db: DB, principal: PageAdmin) -> Response:
    await verify_form_csrf(request, principal)
    form = await request.form()
    try:
        if _text(form, "action") != "requeue":
            raise Invalid("unknown action")
        return _quality_page(request, db, principal, notice=_requeue(db, principal, form))
    except ServiceError as exc:
        db.rollback()
        return _quality_page(request, db, principal, exc.status_code, error=exc.message)


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


def _lineage(items: list[Policy]) -> list[tuple[Policy, int]]:
    """Policies in tree order (parents before children) with their depth."""
    ids = {p.id for p in items}
    children: dict[int | None, list[Policy]] = defaultdict(list)
    for p in sorted(items, key=lambda p: p.version):
        children[p.parent_id if p.parent_id in ids else None].append(p)
    out: list[tuple[Policy, int]] = []

    def walk(parent: int | None, depth: int) -> None:
        for p in children.get(parent, []):
            out.append((p, depth))
            walk(p.id, depth + 1)

    walk(None, 0)
    return out


def _policies_page(request: Request, db: Session, principal: Principal, status: int = 200, **ctx: Any) -> HTMLResponse:
    items = policies.list_policies(db)
    return _page(
        request, principal, "admin/policies.html", status,
        policies=items, lineage=_lineage(items), versions={p.id: p.version for p in items},
        deployed=policies.deployed_policy(db), **ctx,
    )


@router.get("/admin/policies", response_class=HTMLResponse)
def policies_page(request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    return _policies_page(request, db, principal)


@router.post("/admin/policies", response_class=HTMLResponse)
async def policies_post(request: Request, db: DB, principal: PageAdmin) -> Response:
    await verify_form_csrf(request, principal)
    form = await request.form()
    try:
        if _text(form, "action") != "deploy":
            raise Invalid("unknown action")
        policy = policies.deploy_policy(db, principal.user, _int(form, "policy_id", "policy") or 0)
        db.commit()
        return _policies_page(
            request, db, principal,
            notice=f"Policy v{policy.version} is deployed; samplers switch to it within seconds.",
        )
    except ServiceError as exc:
        db.rollback()
        return _policies_page(request, db, principal, exc.status_code, error=exc.message)


# ---------------------------------------------------------------- audit log

AUDIT_PAGE = 50


@router.get("/admin/audit", response_class=HTMLResponse)
def audit_page(request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    params = request.query_params
    action = (params.get("action") or "").strip()[:64] or None
    actor = (params.get("actor") or "").strip()[:64] or None
    before = params.get("before_id", "")
    entries = audit_view.list_entries(
        db, action=action, actor=actor, limit=AUDIT_PAGE + 1, before_id=int(before) if before.isdigit() else None
    )
    return _page(
        request, principal, "admin/audit.html",
        entries=entries[:AUDIT_PAGE], older=entries[AUDIT_PAGE - 1].id if len(entries) > AUDIT_PAGE else None,
        actions=audit_view.actions(db), action=action or "", actor=actor or "",
        actors=[u.username for u in users.list_users(db) if u.is_admin],
    )

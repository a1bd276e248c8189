"""Admin pages for the data: the prompt sets, one set (edit, import), one prompt (gold).

Forms post back to the page's own URL; app/routes/pages/forms.py maps each ``action`` to
its handler below. The view models come from app/services/admin_views.py.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from app.deps import DB, PageAdmin
from app.routes.pages.forms import PageCall, PageForms
from app.services import admin_views, conversation_trees, conversations, gold, imports, prompt_sets, red_team
from app.services.errors import Invalid, ServiceError
from app.templating import render

router = APIRouter(include_in_schema=False)


def _set_fields(call: PageCall) -> dict[str, Any]:
    """The editable prompt set fields of the create/edit form."""
    fields: dict[str, Any] = {
        "name": call.text("name"),
        "description": call.raw("description"),
        "guidelines": call.raw("guidelines"),
        "k": call.integer("k", "K"),
        "overlap": call.integer("overlap", "overlap"),
        "demonstration_share": call.number("demonstration_share", "demonstration share"),
        "status": call.text("status") or None,
    }
    sampling = {
        key: value
        for key, value in (
            ("temperature", call.number("temperature", "temperature")),
            ("top_p", call.number("top_p", "top_p")),
            ("max_new_tokens", call.integer("max_new_tokens", "max new tokens")),
        )
        if value is not None
    }
    if sampling:
        fields["sampling"] = sampling
    return {k: v for k, v in fields.items() if v is not None}


# ---------------------------------------------------------------- the list of sets


def _sets_page(call: PageCall, status: int = 200, **ctx: Any) -> HTMLResponse:
    return call.show("admin/prompt_sets.html", status, **admin_views.prompt_sets_list(call.db), **ctx)


SETS = PageForms(_sets_page, default="create")


@SETS.action("create")
def _create_set(call: PageCall) -> Response:
    ps = prompt_sets.create_prompt_set(call.db, call.actor, **_set_fields(call))
    return RedirectResponse(f"/admin/prompt-sets/{ps.id}?created=1", status_code=303)


@router.get("/admin/prompt-sets", response_class=HTMLResponse)
def prompt_sets_page(request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    return _sets_page(PageCall(request, db, principal), form={})


@router.post("/admin/prompt-sets", response_class=HTMLResponse)
async def prompt_sets_post(request: Request, db: DB, principal: PageAdmin) -> Response:
    return await SETS.handle(PageCall(request, db, principal))


# ---------------------------------------------------------------- one set


def _set_page(call: PageCall, status: int = 200, **ctx: Any) -> HTMLResponse:
    params = call.request.query_params
    raw_page = params.get("page", "1")
    ps = prompt_sets.get_prompt_set(call.db, call.path["prompt_set_id"])
    view = admin_views.prompt_set(
        call.db,
        ps,
        split=params.get("split"),
        search=(params.get("q") or "").strip()[:200] or None,
        page=int(raw_page) if raw_page.isdigit() else 1,
    )
    return call.show(
        "admin/prompt_set.html", status, **view,
        max_upload_mb=call.request.app.state.settings.max_upload_bytes / 1_048_576,
        created=params.get("created") == "1",
        red_team_report=red_team.failure_report(call.db, ps) if red_team.is_red_team(ps) else None, **ctx,
    )


SET = PageForms(_set_page)


@SET.action("save")
def _save_set(call: PageCall) -> dict[str, Any]:
    ps = prompt_sets.get_prompt_set(call.db, call.path["prompt_set_id"])
    prompt_sets.update_prompt_set(call.db, call.actor, ps, **_set_fields(call))
    return {"notice": "Saved."}


@SET.action("red_team_promote")
def _promote_red_team(call: PageCall) -> dict[str, Any]:
    """Make a red-team set's rankings and written replies training data (once)."""
    ps = prompt_sets.get_prompt_set(call.db, call.path["prompt_set_id"])
    already = ps.red_team_promoted_at is not None
    red_team.promote(call.db, ps, call.actor)
    return {"notice": "Already promoted." if already else "Promoted: rounds now train on this set's data as of now."}


@SET.action("import")
async def _import(call: PageCall) -> dict[str, Any]:
    """Import an uploaded JSONL/CSV file; bad lines are listed and nothing is imported."""
    settings = call.request.app.state.settings
    ps = prompt_sets.get_prompt_set(call.db, call.path["prompt_set_id"])
    upload = call.form.get("file") if call.form is not None else None
    try:
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise Invalid("choose a .jsonl or .csv file to upload")
        data = await upload.read(settings.max_upload_bytes + 1)
        imports.check_size(len(data) if len(data) > settings.max_upload_bytes else None, settings.max_upload_bytes)
        fmt = imports.detect_format(upload.filename, upload.content_type, data)
        filename = upload.filename

        def work() -> imports.ImportResult:
            result = imports.import_rows(
                call.db, ps, imports.parse_file(data, fmt), validation_fraction=settings.validation_fraction,
                actor=call.actor, source=f"dashboard:{filename}",
            )
            call.db.commit()
            return result

        result = await run_in_threadpool(work)
    except imports.ImportFailed as exc:
        call.db.rollback()
        return {"status_code": 422, "import_failed": exc}
    except ServiceError as exc:
        call.db.rollback()
        return {"status_code": exc.status_code, "import_error": exc.message}
    return {"import_result": result, "import_file": filename}


@router.get("/admin/prompt-sets/{prompt_set_id}", response_class=HTMLResponse)
def prompt_set_page(prompt_set_id: int, request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    return _set_page(PageCall(request, db, principal, {"prompt_set_id": prompt_set_id}))


@router.post("/admin/prompt-sets/{prompt_set_id}", response_class=HTMLResponse)
async def prompt_set_post(prompt_set_id: int, request: Request, db: DB, principal: PageAdmin) -> Response:
    call = PageCall(request, db, principal, {"prompt_set_id": prompt_set_id})
    length = request.headers.get("content-length", "")
    limit = request.app.state.settings.max_upload_bytes
    if length.isdigit() and int(length) > limit + 64 * 1024:  # the file plus the form's other fields
        # Answered before the body is read (so before its CSRF field can be); it changes nothing.
        return _set_page(
            call, 413, import_error=f"the upload is over the limit of {limit} bytes (RLHF_MAX_UPLOAD_BYTES)"
        )
    return await SET.handle(call)


@router.get("/admin/prompt-sets/{prompt_set_id}/trees", response_class=HTMLResponse)
def trees_page(prompt_set_id: int, request: Request, db: DB, principal: PageAdmin, page: int = 1) -> HTMLResponse:
    """A conversation set's trees, nested: each message with who wrote it and its votes."""
    ps = prompt_sets.get_prompt_set(db, prompt_set_id)
    per_page = 20
    view = conversation_trees.list_trees(db, ps, offset=(max(1, page) - 1) * per_page, limit=per_page)
    pages = max(1, -(-view.total // per_page))
    return render(request, "admin/trees.html", principal, ps=ps, view=view, page=max(1, page), pages=pages,
                  settings=conversations.settings_of(ps))


# ---------------------------------------------------------------- one prompt (gold)


def _prompt_page(call: PageCall, status: int = 200, **ctx: Any) -> HTMLResponse:
    prompt = prompt_sets.get_prompt(call.db, call.path["prompt_id"])
    return call.show("admin/prompt.html", status, **admin_views.prompt(call.db, prompt), **ctx)


PROMPT = PageForms(_prompt_page)


@PROMPT.action("set_gold")
def _set_gold(call: PageCall) -> dict[str, Any]:
    """The form has a place field ``rank_<completion id>`` per completion; equal places tie."""
    places: dict[int, list[int]] = defaultdict(list)
    for key in call.form or {}:
        if key.startswith("rank_") and call.text(key):
            places[call.integer(key, "rank") or 0].append(int(key.removeprefix("rank_")))
    ranking = [sorted(places[p]) for p in sorted(places)]
    gold.set_gold(call.db, call.actor, prompt_sets.get_prompt(call.db, call.path["prompt_id"]), ranking)
    return {"notice": "Gold ranking saved."}


@PROMPT.action("clear_gold")
def _clear_gold(call: PageCall) -> dict[str, Any]:
    gold.clear_gold(call.db, call.actor, prompt_sets.get_prompt(call.db, call.path["prompt_id"]))
    return {"notice": "No longer a gold prompt."}


@router.get("/admin/prompts/{prompt_id}", response_class=HTMLResponse)
def prompt_page(prompt_id: int, request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    return _prompt_page(PageCall(request, db, principal, {"prompt_id": prompt_id}))


@router.post("/admin/prompts/{prompt_id}", response_class=HTMLResponse)
async def prompt_post(prompt_id: int, request: Request, db: DB, principal: PageAdmin) -> Response:
    return await PROMPT.handle(PageCall(request, db, principal, {"prompt_id": prompt_id}))

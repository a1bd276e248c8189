"""Prompt sets, prompt imports (JSON, JSONL or CSV upload) and gold prompts."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.deps import DB, ApiAdmin, ApiUser
from app.routes.api.answers import store_answer
from app.models import Completion
from app.schemas.errors import ErrorOut
from app.schemas.prompt_sets import (
    CompletionOut,
    GoldIn,
    ImportErrorOut,
    ImportResultOut,
    PromptDetail,
    PromptImport,
    PromptOut,
    PromptSetCreate,
    PromptSetOut,
    PromptSetUpdate,
)
from app.schemas.seeds import SeedIn, SeedOut
from app.services import gold, imports, prompt_sets, seeds
from app.services.errors import Invalid

router = APIRouter(tags=["prompt_sets"])

MULTIPART_SLACK = 64 * 1024


@router.get("/prompt-sets", response_model=list[PromptSetOut])
def list_prompt_sets(db: DB, _: ApiAdmin) -> list[PromptSetOut]:
    """Every set (admin; labelers see the sets they can work on through the tasks API)."""
    return [PromptSetOut.model_validate(ps) for ps in prompt_sets.list_prompt_sets(db)]


@router.post("/prompt-sets", response_model=PromptSetOut, status_code=201)
def create_prompt_set(body: PromptSetCreate, request: Request, db: DB, admin: ApiAdmin) -> PromptSetOut:
    """A set of single-turn prompts, or (``"kind": "conversation"``) of conversation trees:
    those need a deployed policy with a chat template (409 with none deployed, 422 without
    a template)."""
    settings = request.app.state.settings
    ps = prompt_sets.create_prompt_set(
        db, admin.user, artifacts_dir=settings.resolved_artifacts_dir, **body.model_dump(exclude_none=True)
    )
    db.commit()
    return PromptSetOut.model_validate(ps)


@router.get("/prompt-sets/{prompt_set_id}", response_model=PromptSetOut)
def get_prompt_set(prompt_set_id: int, db: DB, _: ApiAdmin) -> PromptSetOut:
    return PromptSetOut.model_validate(prompt_sets.get_prompt_set(db, prompt_set_id))


@router.patch("/prompt-sets/{prompt_set_id}", response_model=PromptSetOut)
def update_prompt_set(prompt_set_id: int, body: PromptSetUpdate, db: DB, admin: ApiAdmin) -> PromptSetOut:
    ps = prompt_sets.get_prompt_set(db, prompt_set_id)
    prompt_sets.update_prompt_set(db, admin.user, ps, **body.model_dump(exclude_unset=True))
    db.commit()
    return PromptSetOut.model_validate(ps)


IMPORT_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PromptImport.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "application/x-ndjson": {"schema": {"type": "string"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    },
}
IMPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"description": "the upload is over RLHF_MAX_UPLOAD_BYTES", "model": ErrorOut},
    415: {"description": "not a prompt file (an image, a PDF, another extension or content type)", "model": ErrorOut},
    422: {"description": "bad lines (nothing imported)", "model": ImportErrorOut},
}


async def _read_upload(request: Request, limit: int) -> tuple[bytes, str | None, str | None]:
    """The uploaded bytes, file name and content type; 413 past ``limit`` (checked while reading)."""
    form = await request.form(max_files=1, max_fields=10)
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise Invalid('the upload needs a file in the form field "file"')
        data = await upload.read(limit + 1)
        imports.check_size(len(data) if len(data) > limit else None, limit)
        return data, upload.filename, upload.content_type
    finally:
        await form.close()


async def _read_body(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        imports.check_size(size if size > limit else None, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _import_failed(exc: imports.ImportFailed) -> JSONResponse:
    return JSONResponse(
        {"detail": exc.message, "errors": [{"line": e.line, "message": e.message} for e in exc.errors]},
        status_code=422,
    )


@router.post(
    "/prompt-sets/{prompt_set_id}/prompts",
    response_model=ImportResultOut,
    responses=IMPORT_RESPONSES,
    openapi_extra=IMPORT_DOC,
)
async def import_prompts(prompt_set_id: int, request: Request, db: DB, admin: ApiAdmin) -> Response:
    """Import prompts: a JSON body ``{"prompts": [...]}``, a multipart upload (field ``file``,
    JSONL or CSV), or a raw JSONL/CSV body. The whole input is validated first; any bad line
    gives 422 with ``errors: [{"line", "message"}]`` and nothing is imported. Duplicates
    (same text in the set) are skipped and counted."""
    settings = request.app.state.settings
    limit = settings.max_upload_bytes
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    length = request.headers.get("content-length")
    if length and length.isdigit():
        # A multipart body carries the file plus a little framing; the file itself is checked as it is read.
        slack = MULTIPART_SLACK if ctype == "multipart/form-data" else 0
        if int(length) > limit + slack:
            imports.check_size(int(length), limit)
    try:
        if ctype == "multipart/form-data":
            data, filename, file_type = await _read_upload(request, limit)
            fmt = imports.detect_format(filename, file_type, data)
            rows = await run_in_threadpool(imports.parse_file, data, fmt)
            source = f"upload:{filename or fmt}"
        else:
            data = await _read_body(request, limit)
            if ctype in ("application/json", ""):
                try:
                    body = PromptImport.model_validate_json(data)
                except ValidationError as exc:
                    raise Invalid(f'the body must be {{"prompts": [...]}}: {exc.errors()[0]["msg"]}') from exc
                rows = await run_in_threadpool(imports.parse_items, body.prompts)
                source = "api"
            else:
                imports.check_upload(None, ctype, data)
                fmt = "csv" if "csv" in ctype else "jsonl"
                rows = await run_in_threadpool(imports.parse_file, data, fmt)
                source = f"api:{fmt}"
    except imports.ImportFailed as exc:
        return _import_failed(exc)

    def write() -> imports.ImportResult:
        ps = prompt_sets.get_prompt_set(db, prompt_set_id)
        result = imports.import_rows(
            db, ps, rows, validation_fraction=settings.validation_fraction, actor=admin.user, source=source
        )
        db.commit()
        return result

    try:
        result = await run_in_threadpool(write)
    except imports.ImportFailed as exc:  # rows the set cannot take (a conversation set's seeds)
        return _import_failed(exc)
    return JSONResponse(ImportResultOut(imported=result.imported, duplicates=result.duplicates).model_dump())


def seed_out(seed: seeds.WrittenSeed) -> SeedOut:
    node = seed.node
    return SeedOut(
        prompt_id=seed.prompt.id, node_id=node.id, tree_id=seed.tree_id, prompt_set_id=node.prompt_set_id,
        content=node.content, author_id=node.author_id, created_at=node.created_at, created=seed.created,
    )


@router.post(
    "/prompt-sets/{prompt_set_id}/seeds",
    response_model=SeedOut,
    status_code=201,
    responses={200: {"description": "this labeler had written the same seed in the set before", "model": SeedOut}},
)
def write_seed(
    prompt_set_id: int, body: SeedIn, request: Request, response: Response, db: DB, principal: ApiUser
) -> SeedOut:
    """Start a conversation (conversation sets, any labeler): ``text`` becomes the opening
    user message of a new tree, as an imported seed would, written by the caller. The
    sampler answers it with K replies within its next batches. The same text again from
    the same labeler answers 200 with the stored seed; 422 for empty text, NUL characters,
    text over the set's ``max_context_chars`` or a set of another kind; 409 for a paused or
    archived set, or a seed already imported or written by someone else."""
    settings = request.app.state.settings

    def work() -> tuple[SeedOut, bool]:
        seed = seeds.write_seed(
            db, prompt_set_id, principal.user, text=body.text, validation_fraction=settings.validation_fraction
        )
        return seed_out(seed), seed.created

    return store_answer(db, response, work)  # 200 on response when this labeler wrote it before


@router.get("/prompt-sets/{prompt_set_id}/prompts", response_model=list[PromptOut])
def list_prompts(
    prompt_set_id: int,
    db: DB,
    _: ApiAdmin,
    split: Annotated[str | None, Query(pattern="^(train|validation)$")] = None,
    gold_only: Annotated[bool | None, Query(alias="gold")] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[PromptOut]:
    prompt_sets.get_prompt_set(db, prompt_set_id)
    found = prompt_sets.list_prompts(
        db, prompt_set_id, split=split, gold=gold_only, search=q, limit=limit, offset=offset
    )
    return [PromptOut.model_validate(p) for p in found]


def _detail(db: Session, prompt_id: int) -> PromptDetail:
    prompt = prompt_sets.get_prompt(db, prompt_id)
    completions = db.scalars(
        select(Completion).where(Completion.prompt_id == prompt.id).order_by(Completion.id)
    ).all()
    out = PromptOut.model_validate(prompt).model_dump()
    return PromptDetail(**out, completions=[CompletionOut.model_validate(c) for c in completions])


@router.get("/prompts/{prompt_id}", response_model=PromptDetail)
def get_prompt(prompt_id: int, db: DB, _: ApiAdmin) -> PromptDetail:
    """A prompt with all its completions (ready and retired), e.g. to choose a gold ranking."""
    return _detail(db, prompt_id)


@router.put("/prompts/{prompt_id}/gold", response_model=PromptDetail)
def set_gold(prompt_id: int, body: GoldIn, db: DB, admin: ApiAdmin) -> PromptDetail:
    """Make the prompt gold: ``ranking`` is best-first groups of this prompt's completion ids.
    Gold tasks always show exactly these completions; see app/services/gold.py."""
    gold.set_gold(db, admin.user, prompt_sets.get_prompt(db, prompt_id), body.ranking)
    db.commit()
    return _detail(db, prompt_id)


@router.delete("/prompts/{prompt_id}/gold", response_model=PromptDetail)
def clear_gold(prompt_id: int, db: DB, admin: ApiAdmin) -> PromptDetail:
    gold.clear_gold(db, admin.user, prompt_sets.get_prompt(db, prompt_id))
    db.commit()
    return _detail(db, prompt_id)

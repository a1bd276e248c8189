"""Streamed exports: comparisons, rankings and demonstrations as JSONL or CSV (admin only)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from app.deps import DB, ApiAdmin
from app.services import audit, evaluations, exports
from app.services.errors import Invalid

router = APIRouter(tags=["exports"])

MEDIA = {"jsonl": "application/x-ndjson; charset=utf-8", "csv": "text/csv; charset=utf-8"}


def export_filename(kind: str, fmt: str, prompt_set_id: int | None, conversational: bool) -> str:
    parts = [kind]
    if prompt_set_id is not None:
        parts.append(f"set{prompt_set_id}")
    if conversational:
        parts.append("conversational")
    return "-".join(parts) + f".{fmt}"


@router.get(
    "/exports/{kind}.{fmt}",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}},
)
def export(
    kind: Literal["comparisons", "rankings", "demonstrations"],
    fmt: Literal["jsonl", "csv"],
    request: Request,
    db: DB,
    admin: ApiAdmin,
    prompt_set_id: int | None = None,
    split: Annotated[Literal["train", "validation"] | None, Query()] = None,
    policy_id: int | None = None,
    labeler: Annotated[str | None, Query(max_length=64, description="a username")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    include_gold: bool = False,
    format: Annotated[
        Literal["standard", "conversational"] | None,
        Query(description="conversational: TRL's lists of role/content messages"),
    ] = None,
    evaluation_id: Annotated[
        int | None,
        Query(description="comparisons only: one line per judgment of this evaluation (docs/evaluations.md)"),
    ] = None,
) -> StreamingResponse:
    """Stream ``kind`` (comparisons, rankings, demonstrations) as ``fmt`` (jsonl, csv).

    Only active rows; gold prompts only with ``include_gold``; ``since`` inclusive,
    ``until`` exclusive. Memory is constant whatever the size (keyset-paginated reads).
    ``comparisons`` with ``evaluation_id``: one line per evaluation judgment (prompt,
    completion_a, completion_b, the policy of each, choice, ratings, labeler)."""
    if evaluation_id is not None:
        return _evaluation_export(kind, fmt, request, db, admin, evaluation_id)
    flt = exports.ExportFilter(
        prompt_set_id=prompt_set_id, split=split, policy_id=policy_id, labeler=labeler,
        since=since, until=until, include_gold=include_gold,
    )
    flt.check()
    conversational = format == "conversational"
    shown = {k: v for k, v in vars(flt).items() if v not in (None, False)}
    audit.record(db, admin.user, "export.download", "export", f"{kind}.{fmt}", conversational=conversational,
                 **{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in shown.items()})
    db.commit()
    database = request.app.state.db

    def body() -> Iterator[bytes]:
        # Its own session: the request's session is closed once the route returns.
        with database.sessionmaker() as db:
            yield from exports.stream(db, kind, fmt, flt, conversational)

    name = export_filename(kind, fmt, prompt_set_id, conversational)
    return StreamingResponse(
        body(),
        media_type=MEDIA[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )


def _evaluation_export(kind: str, fmt: str, request: Request, db: DB, admin: ApiAdmin, evaluation_id: int) -> StreamingResponse:
    if kind != "comparisons" or fmt != "jsonl":
        raise Invalid("evaluation_id works with comparisons.jsonl only")
    evaluations.get_evaluation(db, evaluation_id)
    audit.record(db, admin.user, "export.download", "export", f"{kind}.{fmt}", evaluation_id=evaluation_id)
    db.commit()
    database = request.app.state.db

    def body() -> Iterator[bytes]:
        with database.sessionmaker() as session:
            yield from exports.to_jsonl(evaluations.judgment_records(session, evaluation_id))

    return StreamingResponse(
        body(),
        media_type=MEDIA[fmt],
        headers={
            "Content-Disposition": f'attachment; filename="comparisons-evaluation{evaluation_id}.jsonl"',
            "Cache-Control": "no-store",
        },
    )

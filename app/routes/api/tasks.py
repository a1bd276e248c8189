"""Labeling API: claim tasks with leases, submit rankings and demonstrations, skip, undo.

Every write runs in :func:`app.db.transact`, which commits before the
response and retries on serialization failures, deadlocks and a busy SQLite database.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.config import Settings
from app.db import transact
from app.deps import DB, ApiUser, get_settings_dep
from app.models import Demonstration, Ranking
from app.routes.api.answers import store_answer
from app.schemas.evaluations import CompareProgressOut, CompareTaskOut
from app.schemas.tasks import (
    ContinuationIn,
    ContinuationOut,
    DemonstrationIn,
    DemonstrationOut,
    NextTaskIn,
    ProgressOut,
    RankingIn,
    RankingOut,
    SkipIn,
    TaskOut,
    TaskStatusOut,
)
from app.services import claims, compare_tasks, continue_tasks, leases, prompt_sets, submissions, tasks
from app.services.errors import Invalid
from app.services.submissions import undo_deadline

router = APIRouter(tags=["tasks"])


def _json(model: Any, status_code: int = 200) -> Response:
    """The validated model as JSON, serialized once by pydantic-core (FastAPI would validate
    a returned model against response_model again and serialize it through jsonable_encoder,
    a noticeable share of the hot path's CPU). The OpenAPI schema still comes from
    response_model."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def _ranking_out(row: Ranking, settings: Settings) -> RankingOut:
    return RankingOut.model_validate(
        {
            **{c: getattr(row, c) for c in RankingOut.model_fields if c != "undo_until"},
            "undo_until": undo_deadline(row.created_at, settings.undo_window_minutes),
        }
    )


def _demonstration_out(row: Demonstration, settings: Settings) -> DemonstrationOut:
    return DemonstrationOut.model_validate(
        {
            **{c: getattr(row, c) for c in DemonstrationOut.model_fields if c != "undo_until"},
            "undo_until": undo_deadline(row.created_at, settings.undo_window_minutes),
        }
    )


def _is_compare(db: DB, task_id: int) -> bool:
    return tasks.get_task(db, task_id).kind == "compare"


@router.post(
    "/tasks/next",
    response_model=TaskOut | CompareTaskOut,
    responses={204: {"description": "nothing is left for this labeler in this set (or evaluation)"}},
)
def next_task(body: NextTaskIn, request: Request, db: DB, principal: ApiUser) -> Any:
    """The caller's task in a prompt set (rank, demonstrate) or an evaluation (compare):
    the live lease they hold, else a newly claimed one. A compare task shows the prompt
    and two sides, A and B, and never which policy wrote which."""
    settings = get_settings_dep(request)
    if body.kind == "compare":
        if body.evaluation_id is None:
            raise Invalid("a compare task needs evaluation_id")

        def claim_compare() -> dict[str, Any] | None:
            task = compare_tasks.next_task(
                db, principal.user, body.evaluation_id or 0,
                lease_minutes=settings.lease_minutes, gold_rate=settings.gold_rate,
            )
            return None if task is None else compare_tasks.task_view(db, task)

        compare_view = transact(db, claim_compare)
        return Response(status_code=204) if compare_view is None else CompareTaskOut.model_validate(compare_view)
    if body.prompt_set_id is None:
        raise Invalid(f"a {body.kind} task needs prompt_set_id")

    def claim() -> dict[str, Any] | None:
        task = claims.next_task(
            db,
            principal.user,
            body.prompt_set_id or 0,
            body.kind,
            lease_minutes=settings.lease_minutes,
            gold_rate=settings.gold_rate,
        )
        return None if task is None else tasks.task_view(db, task)

    view = transact(db, claim)
    if view is None:
        return Response(status_code=204)
    return _json(TaskOut.model_validate(view))


@router.get("/tasks/progress", response_model=ProgressOut | CompareProgressOut)
def my_progress(
    db: DB, principal: ApiUser, prompt_set_id: int | None = None, evaluation_id: int | None = None
) -> Any:
    """The caller's own counts in a set (or, with ``evaluation_id``, in an evaluation's
    compare tasks) and what is left for them (for the empty state)."""
    if evaluation_id is not None:
        return CompareProgressOut.model_validate(compare_tasks.progress(db, principal.user, evaluation_id))
    if prompt_set_id is None:
        raise Invalid("give prompt_set_id (or evaluation_id)")
    return _json(tasks.progress(db, principal.user, prompt_sets.get_prompt_set(db, prompt_set_id)))


@router.get("/tasks/{task_id}", response_model=TaskOut | CompareTaskOut)
def get_task(task_id: int, db: DB, principal: ApiUser) -> Any:
    task = tasks.own_task(db, task_id, principal.user)
    if task.kind == "compare":
        return CompareTaskOut.model_validate(compare_tasks.task_view(db, task))
    return TaskOut.model_validate(tasks.task_view(db, task))


@router.post("/tasks/{task_id}/renew", response_model=TaskOut | CompareTaskOut)
def renew(task_id: int, request: Request, db: DB, principal: ApiUser) -> Any:
    """Extend the lease of the caller's task while they work on it."""
    settings = get_settings_dep(request)
    if _is_compare(db, task_id):

        def renew_compare() -> dict[str, Any]:
            task = compare_tasks.renew_lease(db, task_id, principal.user, lease_minutes=settings.lease_minutes)
            return compare_tasks.task_view(db, task)

        return CompareTaskOut.model_validate(transact(db, renew_compare))

    def work() -> dict[str, Any]:
        task = leases.renew_lease(db, task_id, principal.user, lease_minutes=settings.lease_minutes)
        return tasks.task_view(db, task)

    return TaskOut.model_validate(transact(db, work))


@router.post(
    "/tasks/{task_id}/ranking",
    response_model=RankingOut,
    status_code=201,
    responses={200: {"description": "the identical ranking was already stored", "model": RankingOut}},
)
def submit_ranking(
    task_id: int, body: RankingIn, request: Request, response: Response, db: DB, principal: ApiUser
) -> Any:
    settings = get_settings_dep(request)

    def work() -> tuple[RankingOut, bool]:
        row, created = submissions.submit_ranking(
            db,
            task_id,
            principal.user,
            ranking=body.ranking,
            ratings={k: v.model_dump() for k, v in body.ratings.items()},
            all_unacceptable=body.all_unacceptable,
            comment=body.comment,
            time_spent_s=body.time_spent_s,
        )
        return _ranking_out(row, settings), created

    out = store_answer(db, response, work)  # 200 on response when it was stored before
    return _json(out, response.status_code or 201)


@router.post(
    "/tasks/{task_id}/demonstration",
    response_model=DemonstrationOut,
    status_code=201,
    responses={200: {"description": "the identical demonstration was already stored", "model": DemonstrationOut}},
)
def submit_demonstration(
    task_id: int, body: DemonstrationIn, request: Request, response: Response, db: DB, principal: ApiUser
) -> DemonstrationOut:
    settings = get_settings_dep(request)

    def work() -> tuple[DemonstrationOut, bool]:
        row, created = submissions.submit_demonstration(
            db,
            task_id,
            principal.user,
            text=body.text,
            max_chars=settings.max_demonstration_chars,
            time_spent_s=body.time_spent_s,
        )
        return _demonstration_out(row, settings), created

    return store_answer(db, response, work)


@router.post(
    "/tasks/{task_id}/continuation",
    response_model=ContinuationOut,
    status_code=201,
    responses={200: {"description": "the identical turn was already stored", "model": ContinuationOut}},
)
def submit_continuation(
    task_id: int, body: ContinuationIn, request: Request, response: Response, db: DB, principal: ApiUser
) -> ContinuationOut:
    """The next user turn of a continue task (conversation sets): it follows the task's
    best-ranked or written reply (or ``reply_id``), and its new context goes to the
    sampler, whose K replies become a rank task later."""
    settings = get_settings_dep(request)

    def work() -> tuple[ContinuationOut, bool]:
        node, created = continue_tasks.submit_continuation(
            db, task_id, principal.user, text=body.text, reply_id=body.reply_id,
            max_chars=settings.max_demonstration_chars, time_spent_s=body.time_spent_s,
        )
        out = ContinuationOut.model_validate(
            {
                **{c: getattr(node, c) for c in ContinuationOut.model_fields if c != "undo_until"},
                "undo_until": undo_deadline(node.created_at, settings.undo_window_minutes),
            }
        )
        return out, created

    return store_answer(db, response, work)


@router.post("/tasks/{task_id}/skip", response_model=TaskStatusOut)
def skip(task_id: int, db: DB, principal: ApiUser, body: SkipIn | None = None) -> TaskStatusOut:
    """Give the task back (optionally saying why); this labeler does not get the prompt again."""

    def work() -> TaskStatusOut:
        task = submissions.skip_task(db, task_id, principal.user, reason=(body or SkipIn()).reason)
        return TaskStatusOut.model_validate(task)

    return transact(db, work)


@router.post("/tasks/{task_id}/undo", response_model=TaskOut | CompareTaskOut)
def undo(task_id: int, request: Request, db: DB, principal: ApiUser) -> Any:
    """Take back the caller's last submission within the undo window; the task is theirs
    again with a fresh lease, and ``previous`` holds the answer that was taken back."""
    settings = get_settings_dep(request)
    if _is_compare(db, task_id):

        def undo_compare() -> dict[str, Any]:
            task, previous = compare_tasks.undo_judgment(
                db, task_id, principal.user,
                window_minutes=settings.undo_window_minutes, lease_minutes=settings.lease_minutes,
            )
            return {**compare_tasks.task_view(db, task), "previous": previous}

        return CompareTaskOut.model_validate(transact(db, undo_compare))

    def work() -> dict[str, Any]:
        task, previous = submissions.undo_submission(
            db,
            task_id,
            principal.user,
            window_minutes=settings.undo_window_minutes,
            lease_minutes=settings.lease_minutes,
        )
        return {**tasks.task_view(db, task), "previous": previous}

    return TaskOut.model_validate(transact(db, work))

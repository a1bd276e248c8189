"""Evaluations API: blind human comparison of policy versions, the leaderboard, the
verdict for a policy pair, and compare-task judgments (docs/evaluations.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response

from app.config import Settings
from app.db import transact
from app.deps import DB, ApiAdmin, ApiUser, get_settings_dep
from app.models import ComparisonJudgment
from app.routes.api.answers import store_answer
from app.schemas.evaluations import (
    ComparisonIn,
    EvaluationIn,
    EvaluationOut,
    EvaluationStatusIn,
    GoldIn,
    JudgmentOut,
    LeaderboardOut,
    VerdictOut,
)
from app.services import compare_tasks, evaluations
from app.services.submissions import undo_deadline

router = APIRouter(tags=["evaluations"])


@router.post(
    "/evaluations",
    response_model=EvaluationOut,
    status_code=201,
    responses={
        201: {
            "description": "created. ``status`` is ``active`` when every named policy already has its "
            "samples of the prompts, else ``sampling``: the worker's sampler writes the missing ones "
            "(the set's sampling settings, a recorded seed) and opens the evaluation by itself"
        }
    },
)
def create_evaluation(body: EvaluationIn, db: DB, admin: ApiAdmin) -> EvaluationOut:
    """Create an evaluation of two or more policies on the chosen prompts (admin).

    Lays out prompt x policy pair x ``per_pair`` comparison slots, each judged by
    ``overlap`` labelers. 404 for an unknown policy or set, 422 for a policy that is not
    ready or a prompt source with no prompts, 409 for a name in use."""

    def work() -> dict[str, Any]:
        ev = evaluations.create_evaluation(db, admin.user, **body.model_dump())
        return evaluations.evaluation_view(db, ev)

    return EvaluationOut.model_validate(transact(db, work))


@router.get("/evaluations", response_model=list[EvaluationOut])
def list_evaluations(db: DB, admin: ApiAdmin) -> list[EvaluationOut]:
    """Every evaluation, newest first, with its progress (admin)."""
    return [EvaluationOut.model_validate(evaluations.evaluation_view(db, ev)) for ev in evaluations.list_evaluations(db)]


@router.get("/evaluations/{evaluation_id}", response_model=EvaluationOut)
def get_evaluation(evaluation_id: int, db: DB, admin: ApiAdmin) -> EvaluationOut:
    return EvaluationOut.model_validate(evaluations.evaluation_view(db, evaluations.get_evaluation(db, evaluation_id)))


@router.post("/evaluations/{evaluation_id}/status", response_model=EvaluationOut)
def set_status(evaluation_id: int, body: EvaluationStatusIn, db: DB, admin: ApiAdmin) -> EvaluationOut:
    """Pause, resume or close an evaluation (admin). A sampling one opens by itself."""

    def work() -> dict[str, Any]:
        ev = evaluations.set_status(db, admin.user, evaluations.get_evaluation(db, evaluation_id, lock=True), body.status)
        return evaluations.evaluation_view(db, ev)

    return EvaluationOut.model_validate(transact(db, work))


@router.get("/evaluations/{evaluation_id}/leaderboard", response_model=LeaderboardOut)
def leaderboard(
    evaluation_id: int,
    db: DB,
    admin: ApiAdmin,
    rounds: int = Query(200, ge=0, le=2000, description="bootstrap rounds for the 95% intervals"),
) -> LeaderboardOut:
    """Per policy: Bradley-Terry strength and Elo-scale rating over all judgments (ties and
    both-bad count half) with 95% bootstrap intervals, wins/losses/ties/both-bad, mean
    Likert and flag rates; per pair: head-to-head win rate with a Wilson interval; per
    neighbour pair in the ranking: whether they are separated and about how many more
    comparisons would separate them (admin)."""
    ev = evaluations.get_evaluation(db, evaluation_id)
    return LeaderboardOut.model_validate(evaluations.leaderboard_view(db, ev, rounds=rounds))


@router.get("/evaluations/{evaluation_id}/verdict", response_model=VerdictOut)
def verdict(
    evaluation_id: int,
    new_policy_id: int,
    parent_policy_id: int,
    db: DB,
    admin: ApiAdmin,
    threshold: float = Query(0.5, ge=0, le=1, description="the win rate the new policy must beat"),
) -> VerdictOut:
    """The human verdict on ``new_policy_id`` against ``parent_policy_id`` (admin)."""
    return VerdictOut.model_validate(
        evaluations.verdict(db, evaluation_id, new_policy_id, parent_policy_id, threshold=threshold)
    )


@router.put("/evaluations/{evaluation_id}/comparisons/{comparison_id}/gold", status_code=204)
def set_gold(evaluation_id: int, comparison_id: int, body: GoldIn, db: DB, admin: ApiAdmin) -> Response:
    """Make a comparison gold with a reference answer, or clear it (admin)."""

    def work() -> None:
        evaluations.get_evaluation(db, evaluation_id)
        evaluations.set_gold(db, admin.user, comparison_id, body.outcome)

    transact(db, work)
    return Response(status_code=204)


def _judgment_out(row: ComparisonJudgment, settings: Settings) -> JudgmentOut:
    return JudgmentOut.model_validate(
        {
            **{c: getattr(row, c) for c in JudgmentOut.model_fields if c != "undo_until"},
            "undo_until": undo_deadline(row.created_at, settings.undo_window_minutes),
        }
    )


@router.post(
    "/tasks/{task_id}/comparison",
    response_model=JudgmentOut,
    status_code=201,
    tags=["tasks"],
    responses={200: {"description": "the identical judgment was already stored", "model": JudgmentOut}},
)
def submit_comparison(
    task_id: int, body: ComparisonIn, request: Request, response: Response, db: DB, principal: ApiUser
) -> JudgmentOut:
    """Answer a compare task: ``choice`` a, b, tie or both_bad, and optional per-side
    ratings (Likert 1-7, flags). Idempotent: the identical answer again is 200 with the
    stored row; a different one on a submitted task is 409 (undo first)."""
    settings = get_settings_dep(request)

    def work() -> tuple[JudgmentOut, bool]:
        row, created = compare_tasks.submit_comparison(
            db,
            task_id,
            principal.user,
            choice=body.choice,
            ratings={k: v.model_dump() for k, v in body.ratings.items()},
            comment=body.comment,
            time_spent_s=body.time_spent_s,
        )
        return _judgment_out(row, settings), created

    return store_answer(db, response, work)

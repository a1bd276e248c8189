"""Red-team conversation sets: the failure rate under attack per policy, and promotion
into training data (admin only; app/services/red_team.py)."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import DB, ApiAdmin
from app.schemas.red_team import FailureReportOut, PolicyFailuresOut, PromotionOut
from app.services import prompt_sets, red_team

router = APIRouter(tags=["red_team"])


def report_out(report: red_team.FailureReport) -> FailureReportOut:
    return FailureReportOut(
        prompt_set_id=report.prompt_set_id,
        failure_flags=list(report.failure_flags),
        promoted_at=report.promoted_at,
        promoted_by_id=report.promoted_by_id,
        policies=[
            PolicyFailuresOut(
                policy_id=p.policy_id, version=p.version, replies=p.replies, failing=p.failing, rate=p.rate,
                low=p.interval[0] if p.interval else None, high=p.interval[1] if p.interval else None,
                flags=dict(p.flags),
            )
            for p in report.policies
        ],
    )


@router.get("/prompt-sets/{prompt_set_id}/red-team", response_model=FailureReportOut)
def failure_report(prompt_set_id: int, db: DB, _: ApiAdmin) -> FailureReportOut:
    """Per policy version: the replies ranked, those flagged as failing (harmful, made-up
    facts, ignoring the instruction), the rate and its 95% Wilson interval. 422 unless the
    set is a red-team conversation set."""
    ps = prompt_sets.get_prompt_set(db, prompt_set_id)
    return report_out(red_team.failure_report(db, ps))


@router.post("/prompt-sets/{prompt_set_id}/red-team/promote", response_model=PromotionOut)
def promote(prompt_set_id: int, db: DB, admin: ApiAdmin) -> PromotionOut:
    """Make the set's rankings and written replies training data, as labeled up to now
    (idempotent: a promoted set answers its first promotion again). 422 unless the set is a
    red-team conversation set."""
    ps = red_team.promote(db, prompt_sets.get_prompt_set(db, prompt_set_id), admin.user)
    db.commit()
    assert ps.red_team_promoted_at is not None
    return PromotionOut(
        prompt_set_id=ps.id, promoted_at=ps.red_team_promoted_at, promoted_by_id=ps.red_team_promoted_by_id
    )

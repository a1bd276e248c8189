"""The policy registry: list policies, deploy one (admin)."""

from __future__ import annotations

from fastapi import APIRouter

from typing import Any

from app.deps import DB, ApiAdmin
from app.models import Policy
from app.schemas.policies import HumanVerdictOut, PolicyOut
from app.services import evaluations, policies

router = APIRouter(tags=["policies"])


@router.get("/policies", response_model=list[PolicyOut])
def list_policies(db: DB, _: ApiAdmin) -> list[PolicyOut]:
    """Every policy, newest version first, each with its human verdict against its parent
    (``human_verdict``) when an evaluation compares the two."""
    items = policies.list_policies(db)
    verdicts = evaluations.policy_verdicts(db, items)
    return [_out(p, verdicts.get(p.id)) for p in items]


@router.get("/policies/{policy_id}", response_model=PolicyOut)
def get_policy(policy_id: int, db: DB, _: ApiAdmin) -> PolicyOut:
    policy = policies.get_policy(db, policy_id)
    return _out(policy, evaluations.policy_verdicts(db, [policy]).get(policy.id))


def _out(policy: Policy, verdict: dict[str, Any] | None) -> PolicyOut:
    out = PolicyOut.model_validate(policy)
    out.human_verdict = HumanVerdictOut.model_validate(verdict) if verdict else None
    return out


@router.post("/policies/{policy_id}/deploy", response_model=PolicyOut)
def deploy_policy(policy_id: int, db: DB, admin: ApiAdmin) -> PolicyOut:
    """Deploy a ready policy; samplers switch to it within seconds."""
    policy = policies.deploy_policy(db, admin.user, policy_id)
    db.commit()
    return PolicyOut.model_validate(policy)

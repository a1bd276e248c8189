"""The policy registry: list policies, deploy one (admin)."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import DB, ApiAdmin
from app.schemas.policies import PolicyOut
from app.services import policies

router = APIRouter(tags=["policies"])


@router.get("/policies", response_model=list[PolicyOut])
def list_policies(db: DB, _: ApiAdmin) -> list[PolicyOut]:
    """Every policy, newest version first."""
    return [PolicyOut.model_validate(p) for p in policies.list_policies(db)]


@router.get("/policies/{policy_id}", response_model=PolicyOut)
def get_policy(policy_id: int, db: DB, _: ApiAdmin) -> PolicyOut:
    return PolicyOut.model_validate(policies.get_policy(db, policy_id))


@router.post("/policies/{policy_id}/deploy", response_model=PolicyOut)
def deploy_policy(policy_id: int, db: DB, admin: ApiAdmin) -> PolicyOut:
    """Deploy a ready policy; samplers switch to it within seconds."""
    policy = policies.deploy_policy(db, admin.user, policy_id)
    db.commit()
    return PolicyOut.model_validate(policy)

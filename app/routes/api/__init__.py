"""The JSON API, mounted at /api/v1."""

from fastapi import APIRouter

from app.routes.api import (
    audit,
    completions,
    conversation_trees,
    evaluations,
    exports,
    health,
    policies,
    prompt_sets,
    red_team,
    stats,
    tasks,
    training,
    users,
    webhooks,
)
from app.schemas.errors import COMMON_ERRORS

api_router = APIRouter(prefix="/api/v1")
api_router.include_router(health.router)
for module in (
    users, prompt_sets, conversation_trees, red_team, tasks, exports, training, policies, stats, completions,
    audit, evaluations, webhooks,
):
    api_router.include_router(module.router, responses=COMMON_ERRORS)

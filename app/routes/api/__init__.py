"""The JSON API, mounted at /api/v1."""

from fastapi import APIRouter

from app.routes.api import (
    audit,
    completions,
    exports,
    health,
    policies,
    prompt_sets,
    stats,
    tasks,
    training,
    users,
)

api_router = APIRouter(prefix="/api/v1")
for module in (health, users, prompt_sets, tasks, exports, training, policies, stats, completions, audit):
    api_router.include_router(module.router)

"""Server-rendered pages (Jinja2)."""

from fastapi import APIRouter

from app.routes.pages import admin, auth, evaluations, label

pages_router = APIRouter()
for module in (auth, label, admin, evaluations):
    pages_router.include_router(module.router)

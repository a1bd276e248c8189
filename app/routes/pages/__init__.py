"""Server-rendered pages (Jinja2)."""

from fastapi import APIRouter

from app.routes.pages import admin, admin_people, admin_sets, auth, evaluations, label

pages_router = APIRouter()
for module in (auth, label, admin, admin_sets, admin_people, evaluations):
    pages_router.include_router(module.router)

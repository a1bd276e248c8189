"""Server-rendered pages (Jinja2)."""

from fastapi import APIRouter

from app.routes.pages import admin, admin_people, admin_sets, admin_webhooks, auth, evaluations, label, playground

pages_router = APIRouter()
for module in (auth, label, admin, admin_sets, admin_people, evaluations, admin_webhooks, playground):
    pages_router.include_router(module.router)

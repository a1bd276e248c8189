"""Server-rendered pages (Jinja2)."""

from fastapi import APIRouter

from app.routes.pages import admin, auth, label

pages_router = APIRouter()
for module in (auth, label, admin):
    pages_router.include_router(module.router)

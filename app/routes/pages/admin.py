"""Admin dashboard pages."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.deps import PageAdmin
from app.templating import render

router = APIRouter(include_in_schema=False)


@router.get("/admin", response_class=HTMLResponse)
def dashboard(request: Request, principal: PageAdmin) -> HTMLResponse:
    return render(request, "admin/index.html", principal)

"""Labeler pages."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.deps import PageUser
from app.templating import render

router = APIRouter(include_in_schema=False)


@router.get("/label", response_class=HTMLResponse)
def label_home(request: Request, principal: PageUser) -> HTMLResponse:
    return render(request, "label/index.html", principal)

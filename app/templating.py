"""Jinja2 environment (autoescape always on) and a render helper for pages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from markdown_it import MarkdownIt
from markupsafe import Markup

from app.deps import Principal

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"

# html=False: raw HTML in Markdown is escaped, so guidelines can never inject markup.
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def render_markdown(text: str) -> Markup:
    return Markup(_markdown.render(text or ""))


def json_text(value: Any, indent: int | None = None) -> str:
    """JSON to show as page text: plain characters, escaped by autoescape like any text.
    (``tojson`` is for ``<script>`` blocks: it writes ``<`` and ``&`` as ``\\u003c``, ``\\u0026``.)"""
    return json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=True, default=str)


env = Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=True)
env.filters["markdown"] = render_markdown
env.filters["json"] = json_text
templates = Jinja2Templates(env=env)


def render(
    request: Request,
    name: str,
    principal: Principal | None = None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        name,
        {
            "user": principal.user if principal else None,
            "csrf_token": principal.csrf_token if principal else "",
            **context,
        },
        status_code=status_code,
    )

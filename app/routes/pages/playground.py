"""The Playground page: one prompt to two policy endpoints side by side (admin only).

The page posts the prompt back to ``/admin/playground`` (CSRF-checked like every admin
form); app/services/playground.py asks both ``rlhf policy serve`` endpoints over HTTP at
once, so the web tier never loads a model. The endpoints offered are
``RLHF_PLAYGROUND_ENDPOINTS``; an admin may type any other.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app.deps import DB, PageAdmin
from app.routes.pages.forms import PageCall, PageForms
from app.services import playground

router = APIRouter(include_in_schema=False)


def _page(call: PageCall, status: int = 200, **ctx: Any) -> HTMLResponse:
    settings = call.request.app.state.settings
    configured = settings.playground_urls
    defaults = {
        "endpoint_a": configured[0] if configured else "",
        "endpoint_b": configured[1 % len(configured)] if configured else "",
        "max_tokens": playground.DEFAULT_MAX_TOKENS, "temperature": playground.DEFAULT_TEMPERATURE,
    }
    return call.show("admin/playground.html", status, configured=configured,
                     values={**defaults, **(ctx.pop("form", None) or {})}, **ctx)


PLAYGROUND = PageForms(_page, default="ask")


@PLAYGROUND.action("ask")
async def _ask(call: PageCall) -> dict[str, Any]:
    max_tokens, temperature = call.integer("max_tokens", "max tokens"), call.number("temperature")
    ask = playground.Ask(
        prompt=call.raw("prompt"), system=call.raw("system"),
        **({"max_tokens": max_tokens} if max_tokens is not None else {}),
        **({"temperature": temperature} if temperature is not None else {}),
    )
    endpoints = [call.text("endpoint_a"), call.text("endpoint_b")]
    timeout = call.request.app.state.settings.playground_timeout_s
    replies = await playground.side_by_side(endpoints, ask, timeout_s=timeout)
    return {"replies": replies, "form": dict(call.form or {})}


@router.get("/admin/playground", response_class=HTMLResponse)
def playground_page(request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    return _page(PageCall(request, db, principal))


@router.post("/admin/playground", response_class=HTMLResponse)
async def playground_post(request: Request, db: DB, principal: PageAdmin) -> Response:
    return await PLAYGROUND.handle(PageCall(request, db, principal))

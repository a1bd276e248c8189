"""The admin pages' form handling: one handler per action, one place for the transaction.

Each admin page posts its forms back to its own URL, so after a form the browser stays on
the page it was on; a hidden ``action`` field names what the form does. A
:class:`PageForms` maps each action to one handler, and :meth:`PageForms.handle` does
what every form needs around it: check the CSRF token, read the form, run the handler,
commit, and render the page with the handler's notice; on a service error, roll back and
render the page with the error (and the form as sent, to fill it in again).

A handler gets a :class:`PageCall` and returns the context to render the page with
(``{"notice": ...}``; a ``"status_code"`` key sets the status), or a Response of its
own (a redirect). Handlers call one service; the services own the guards and the audit.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from app.deps import Principal, verify_form_csrf
from app.models import User
from app.services.errors import Invalid, ServiceError
from app.templating import render


def form_text(form: FormData, name: str, default: str = "") -> str:
    """A text field, stripped (``default`` when absent or a file)."""
    value = form.get(name)
    return value.strip() if isinstance(value, str) else default


@dataclass
class PageCall:
    """One request to an admin page: who asks, the path's ids, and the form when posted."""

    request: Request
    db: Session
    principal: Principal
    path: dict[str, int] = field(default_factory=dict)
    form: FormData | None = None

    @property
    def actor(self) -> User:
        return self.principal.user

    def show(self, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        return render(self.request, template, self.principal, status_code=status, **ctx)

    # --- reading the form ---

    def text(self, name: str, default: str = "") -> str:
        return form_text(self.form, name, default) if self.form is not None else default

    def raw(self, name: str) -> str:
        """A field as sent (not stripped: passwords, descriptions)."""
        return str((self.form.get(name) if self.form is not None else None) or "")

    def _parsed(self, name: str, label: str | None, cast: Callable[[str], Any], what: str) -> Any:
        raw = self.text(name)
        if raw == "":
            return None
        try:
            return cast(raw)
        except ValueError as exc:
            raise Invalid(f"{label or name} must be {what}, not {raw!r}") from exc

    def integer(self, name: str, label: str | None = None) -> int | None:
        return self._parsed(name, label, int, "a whole number")

    def number(self, name: str, label: str | None = None) -> float | None:
        return self._parsed(name, label, float, "a number")

    def id(self, name: str, label: str | None = None) -> int:
        """A required id field (a missing one reads as 0, which no row has: 404)."""
        return self.integer(name, label) or 0


Outcome = dict[str, Any] | Response
Handler = Callable[[PageCall], Outcome | Awaitable[Outcome]]
PageRenderer = Callable[..., HTMLResponse]
"""``render(call, status=200, **ctx)``: the page with extra context."""


class PageForms:
    """The POST side of one admin page: each ``action`` names one handler."""

    def __init__(self, page: PageRenderer, *, default: str | None = None) -> None:
        self.page = page
        self.default = default  # the action of a form that sends none
        self.handlers: dict[str, Handler] = {}

    def action(self, name: str) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self.handlers[name] = fn
            return fn

        return register

    async def handle(self, call: PageCall) -> Response:
        await verify_form_csrf(call.request, call.principal)
        call.form = await call.request.form()
        name = call.text("action") or self.default or ""
        try:
            handler = self.handlers.get(name)
            if handler is None:
                raise Invalid(f"unknown action {name!r}")
            outcome = handler(call)
            if inspect.isawaitable(outcome):
                outcome = await outcome
            call.db.commit()
        except ServiceError as exc:
            call.db.rollback()
            return self.page(call, exc.status_code, error=exc.message, form=dict(call.form))
        if isinstance(outcome, Response):
            return outcome
        status = outcome.pop("status_code", 200)
        return self.page(call, status, **outcome)

"""The body of every error answer of the JSON API, and the error statuses it documents.

app/main.py answers service errors and HTTP errors with ``{"detail": "message"}`` and
request validation errors with ``{"detail": [{"loc", "msg", "type"}], "message": "..."}``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    detail: str | list[ValidationIssue]
    message: str | None = None


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "model": ErrorOut}


#: Documented on every authenticated route (app/routes/api/__init__.py), so that the
#: OpenAPI document lists every status the API can answer with (tests/test_schemathesis.py).
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("the body could not be parsed"),
    401: _error("no credentials, or an unknown, revoked or disabled user's token"),
    403: _error("the caller's role may not do this, or a cookie-authenticated write without X-CSRF-Token"),
    404: _error("an id in the path or the body does not exist"),
    409: _error("the request conflicts with the current state (a duplicate, a task no longer the caller's, ...)"),
    422: _error("invalid input; the message says what is wrong"),
    503: _error("the database is unavailable; retry after the Retry-After header's seconds"),
}

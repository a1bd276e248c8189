"""What the routes that store a labeler's answer (a ranking, a demonstration, a
comparison, a written seed) share: the write in one transaction, and 201 for a new row, 200 for the
identical answer stored before (the idempotent retry)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import Response
from sqlalchemy.orm import Session

from app.db import transact

T = TypeVar("T")


def store_answer(db: Session, response: Response, work: Callable[[], tuple[T, bool]]) -> T:
    """Run ``work`` (returning ``(answer, created)``) with :func:`app.db.transact`; an
    answer that already existed turns the route's 201 into 200."""
    out, created = transact(db, work)
    if not created:
        response.status_code = 200
    return out

"""Webhooks and their deliveries at the API edge (docs/webhooks.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.models.webhooks import DELIVERY_STATUSES, EVENTS
from app.services import webhooks
from app.services.errors import Invalid

EventName = Literal[EVENTS]  # type: ignore[valid-type]
DeliveryStatus = Literal[DELIVERY_STATUSES]  # type: ignore[valid-type]


def _url(value: str | None) -> str | None:
    """The service's URL rule, as a validation error (422 with its message)."""
    if value is None:
        return None
    try:
        return webhooks.check_url(value)
    except Invalid as exc:
        raise ValueError(exc.message) from exc


class WebhookFields(BaseModel):
    """What an admin sets on a hook."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=webhooks.MAX_NAME_CHARS, description="a label for the dashboard")
    url: str = Field(max_length=webhooks.MAX_URL_CHARS, description="http(s) URL the events are POSTed to")
    events: list[EventName] = Field(min_length=1, description="the events this hook receives")
    is_active: bool = Field(default=True, description="an inactive hook gets no new deliveries")

    _check_url = field_validator("url")(_url)


class WebhookCreate(WebhookFields):
    pass


class WebhookUpdate(WebhookFields):
    """Only the fields sent change."""

    name: str | None = Field(default=None, max_length=webhooks.MAX_NAME_CHARS)  # type: ignore[assignment]
    url: str | None = Field(default=None, max_length=webhooks.MAX_URL_CHARS)  # type: ignore[assignment]
    events: list[EventName] | None = Field(default=None, min_length=1)  # type: ignore[assignment]
    is_active: bool | None = None  # type: ignore[assignment]


class WebhookOut(WebhookFields):
    model_config = ConfigDict(from_attributes=True)

    id: int
    events: list[str]
    created_at: datetime
    updated_at: datetime
    deliveries: dict[str, int] = Field(default_factory=dict, description="deliveries so far, by status")


class WebhookCreated(WebhookOut):
    secret: str = Field(description="signs every delivery (X-RLHF-Signature); shown once, here")


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    webhook_id: int
    event: str
    event_id: str = Field(description="the body's id: the same for every hook that got this event")
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    response_code: int | None = None
    response_excerpt: str | None = Field(default=None, description="the start of the receiver's answer")
    error: str | None = None
    created_at: datetime
    body: str = Field(description="the exact JSON that was signed and sent")

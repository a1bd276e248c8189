"""Webhooks (a URL, the events it wants, its signing secret) and their deliveries (the outbox)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.base import UTCDateTime, utcnow

#: The events a webhook can subscribe to (docs/webhooks.md describes each payload).
EVENTS = ("round.finished", "policy.deployed", "prompt_set.completed", "evaluation.finished")
#: The event of a "send test" delivery; sent to one hook on request, never subscribed to.
PING = "ping"
DELIVERY_STATUSES = ("pending", "succeeded", "failed")


class Webhook(Base):
    """A receiver URL for some events. ``secret`` signs every delivery (HMAC-SHA256 of the
    body), so it is kept as it is, not hashed: the API shows it once, at creation and when
    rotated, and never again (docs/webhooks.md, "The secret")."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    secret: Mapped[str] = mapped_column(String(128))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class WebhookDelivery(Base):
    """One event for one webhook: the exact body that is signed and sent, and how sending it
    went. A row is written in the transaction of the event itself (an outbox), so an event is
    recorded exactly when its change commits; the deliverer (app/services/webhook_delivery.py)
    sends it afterwards, retrying with backoff, so a slow or failing receiver never holds up
    the round or the request that caused the event.

    ``status``: ``pending`` (due at ``next_attempt_at``; also while an attempt is in flight,
    which pushes ``next_attempt_at`` past the attempt's timeout, so a deliverer that dies
    mid-attempt leaves a row that becomes due again), ``succeeded`` (a 2xx answer) or
    ``failed`` (every one of ``webhook_max_attempts`` attempts failed).
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_webhook_created", "webhook_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(64))
    #: shared by the deliveries of one event to several hooks (the body's ``id``)
    event_id: Mapped[str] = mapped_column(String(32))
    #: an event that must be sent once (``prompt_set.completed:3:policy:2``); None: always sent
    dedupe_key: Mapped[str | None] = mapped_column(String(128), index=True)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    response_code: Mapped[int | None] = mapped_column(Integer)
    #: the start of the receiver's answer, or why there was none (timeout, refused, ...)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

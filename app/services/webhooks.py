"""Webhooks: what an admin registers, and the outbox every event is written to.

An admin registers a URL for some of :data:`app.models.webhooks.EVENTS`. Each hook gets a
random secret, returned once (at creation and when rotated); every delivery carries
``X-RLHF-Signature: sha256=<hex>``, the HMAC-SHA256 of the exact body under that secret
(:func:`signature`). The secret has to be kept as it is to sign with, so unlike API tokens
it is not hashed (docs/webhooks.md says what follows from that).

:func:`emit` is called by the services where an event happens
(app/services/webhook_events.py builds the payloads), inside their own transaction: it adds
one ``webhook_deliveries`` row per subscribed hook, so the event is recorded exactly when
the change that caused it commits (an outbox), and sending is left to the deliverer
(app/services/webhook_delivery.py). With no hook subscribed it costs one small read.

The JSON API (routes/api/webhooks.py) and the Webhooks page (routes/pages/admin_webhooks.py)
both call the admin actions here, which check the input and write the audit entries
(``webhook.create``, ``webhook.update``, ``webhook.delete``, ``webhook.rotate_secret``,
``webhook.test``, ``webhook.redeliver``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import User, Webhook, WebhookDelivery
from app.models.base import utcnow
from app.models.webhooks import DELIVERY_STATUSES, EVENTS, PING
from app.services import audit
from app.services.errors import Invalid, NotFound

SIGNATURE_HEADER = "X-RLHF-Signature"
EVENT_HEADER = "X-RLHF-Event"
DELIVERY_HEADER = "X-RLHF-Delivery"
SECRET_PREFIX = "whsec_"
MAX_URL_CHARS = 2048
MAX_NAME_CHARS = 128


def new_secret() -> str:
    """A fresh signing secret (``whsec_`` and 43 URL-safe characters, 256 bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, body: bytes) -> str:
    """The ``X-RLHF-Signature`` value of ``body``: ``sha256=`` and the hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """Whether ``header`` is the signature of ``body`` (what a receiver checks)."""
    return hmac.compare_digest(signature(secret, body), header or "")


# --- checking input (the API's schemas and the page's forms both end here) ------------


def check_url(url: str, label: str = "url") -> str:
    """An absolute http(s) URL with a host, stripped (``label`` names the field in errors)."""
    url = (url or "").strip()
    if not url:
        raise Invalid(f"{label} is required")
    if len(url) > MAX_URL_CHARS:
        raise Invalid(f"{label} is too long ({len(url)} characters; at most {MAX_URL_CHARS})")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        host = None
    if host is None or parts.scheme not in ("http", "https"):
        raise Invalid(f"{label} must be an absolute http:// or https:// URL with a host, not {url!r}")
    return url


def check_events(events: Iterable[str]) -> list[str]:
    """Known event names, each once, in the order of :data:`EVENTS`; at least one."""
    wanted = [e.strip() for e in events if e and e.strip()]
    unknown = [e for e in wanted if e not in EVENTS]
    if unknown:
        raise Invalid(f"unknown event(s) {', '.join(map(repr, unknown))}; known: {', '.join(EVENTS)}")
    if not wanted:
        raise Invalid(f"choose at least one event ({', '.join(EVENTS)})")
    return [e for e in EVENTS if e in wanted]


def check_name(name: str | None) -> str:
    name = (name or "").strip()
    if len(name) > MAX_NAME_CHARS:
        raise Invalid(f"name is too long ({len(name)} characters; at most {MAX_NAME_CHARS})")
    return name


# --- hooks ----------------------------------------------------------------------------


def list_webhooks(db: Session) -> list[Webhook]:
    return list(db.scalars(select(Webhook).order_by(Webhook.id)))


def get_webhook(db: Session, webhook_id: int) -> Webhook:
    hook = db.get(Webhook, webhook_id)
    if hook is None:
        raise NotFound(f"webhook {webhook_id} not found")
    return hook


def create_webhook(
    db: Session, actor: User | None, url: str, events: Sequence[str], *, name: str = "", is_active: bool = True
) -> Webhook:
    """Register a hook with a new secret (``hook.secret``: show it to the admin once)."""
    hook = Webhook(
        name=check_name(name), url=check_url(url), events=check_events(events), secret=new_secret(),
        is_active=bool(is_active), created_by_id=actor.id if actor else None,
    )
    db.add(hook)
    db.flush()
    audit.record(db, actor, "webhook.create", "webhook", hook.id, url=hook.url, events=hook.events)
    return hook


def update_webhook(
    db: Session,
    actor: User | None,
    webhook_id: int,
    *,
    url: str | None = None,
    events: Sequence[str] | None = None,
    name: str | None = None,
    is_active: bool | None = None,
) -> Webhook:
    """Change the given fields of a hook (its pending deliveries go to the new URL)."""
    hook = get_webhook(db, webhook_id)
    changed: dict[str, Any] = {}
    if url is not None:
        hook.url = changed["url"] = check_url(url)
    if events is not None:
        hook.events = changed["events"] = check_events(events)
    if name is not None:
        hook.name = changed["name"] = check_name(name)
    if is_active is not None:
        hook.is_active = changed["is_active"] = bool(is_active)
    db.flush()
    audit.record(db, actor, "webhook.update", "webhook", hook.id, **changed)
    return hook


def delete_webhook(db: Session, actor: User | None, webhook_id: int) -> None:
    """Remove a hook and its deliveries (pending ones are never sent)."""
    hook = get_webhook(db, webhook_id)
    audit.record(db, actor, "webhook.delete", "webhook", hook.id, url=hook.url)
    db.delete(hook)
    db.flush()


def rotate_secret(db: Session, actor: User | None, webhook_id: int) -> Webhook:
    """Give the hook a new secret (``hook.secret``, shown once); deliveries sent from now on
    are signed with it, the old one stops verifying at once."""
    hook = get_webhook(db, webhook_id)
    hook.secret = new_secret()
    db.flush()
    audit.record(db, actor, "webhook.rotate_secret", "webhook", hook.id)
    return hook


def send_test(db: Session, actor: User | None, webhook_id: int) -> WebhookDelivery:
    """Queue a ``ping`` delivery to this hook (active or not); the deliverer sends it."""
    hook = get_webhook(db, webhook_id)
    delivery = _enqueue(db, hook, PING, uuid.uuid4().hex, {"webhook_id": hook.id, "message": "test delivery"})
    audit.record(db, actor, "webhook.test", "webhook", hook.id, delivery_id=delivery.id)
    return delivery


# --- deliveries -----------------------------------------------------------------------


def list_deliveries(
    db: Session, webhook_id: int | None, *, status: str | None = None, limit: int = 50, before_id: int | None = None
) -> list[WebhookDelivery]:
    """A hook's deliveries (every hook's: ``webhook_id`` None), newest first."""
    if status is not None and status not in DELIVERY_STATUSES:
        raise Invalid(f"status must be one of {', '.join(DELIVERY_STATUSES)}, not {status!r}")
    query = select(WebhookDelivery)
    if webhook_id is not None:
        get_webhook(db, webhook_id)
        query = query.where(WebhookDelivery.webhook_id == webhook_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    if before_id is not None:
        query = query.where(WebhookDelivery.id < before_id)
    return list(db.scalars(query.order_by(WebhookDelivery.id.desc()).limit(max(1, min(limit, 500)))))


def get_delivery(db: Session, delivery_id: int) -> WebhookDelivery:
    delivery = db.get(WebhookDelivery, delivery_id)
    if delivery is None:
        raise NotFound(f"webhook delivery {delivery_id} not found")
    return delivery


def redeliver(db: Session, actor: User | None, delivery_id: int) -> WebhookDelivery:
    """Send a delivery again from its first attempt (same body, same event id)."""
    delivery = get_delivery(db, delivery_id)
    delivery.status, delivery.attempts, delivery.next_attempt_at = "pending", 0, utcnow()
    db.flush()
    audit.record(db, actor, "webhook.redeliver", "webhook_delivery", delivery.id, webhook_id=delivery.webhook_id)
    return delivery


def delivery_counts(db: Session) -> dict[int, dict[str, int]]:
    """Per hook id: its deliveries by status (for the dashboard and the API)."""
    counts: dict[int, dict[str, int]] = {}
    rows = db.execute(
        select(WebhookDelivery.webhook_id, WebhookDelivery.status, func.count())
        .group_by(WebhookDelivery.webhook_id, WebhookDelivery.status)
    )
    for hook_id, status, n in rows:
        counts.setdefault(hook_id, dict.fromkeys(DELIVERY_STATUSES, 0))[status] = int(n)
    return counts


# --- the outbox -----------------------------------------------------------------------


def subscribers(db: Session, event: str) -> list[Webhook]:
    """The active hooks that want ``event`` (hooks are few: filtered here, not in SQL)."""
    return [h for h in db.scalars(select(Webhook).where(Webhook.is_active.is_(True))) if event in (h.events or [])]


def wanted(db: Session, event: str) -> bool:
    """Whether any active hook wants ``event``: callers check this before building a costly payload."""
    return bool(subscribers(db, event))


def emit(db: Session, event: str, data: dict[str, Any], *, dedupe_key: str | None = None) -> list[WebhookDelivery]:
    """Record ``event`` for every hook that wants it, in the caller's transaction.

    ``dedupe_key`` names an event that is sent once: when a delivery with that key exists
    already, nothing is added. Returns the new deliveries.
    """
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    hooks = subscribers(db, event)
    if not hooks:
        return []
    if dedupe_key is not None and db.scalar(
        select(WebhookDelivery.id).where(WebhookDelivery.dedupe_key == dedupe_key).limit(1)
    ):
        return []
    event_id = uuid.uuid4().hex
    return [_enqueue(db, hook, event, event_id, data, dedupe_key) for hook in hooks]


def _enqueue(
    db: Session, hook: Webhook, event: str, event_id: str, data: dict[str, Any], dedupe_key: str | None = None
) -> WebhookDelivery:
    now = utcnow()
    body = json.dumps(
        {"id": event_id, "event": event, "created_at": now.isoformat(), "data": data},
        separators=(",", ":"), sort_keys=True, default=str,
    )
    delivery = WebhookDelivery(
        webhook_id=hook.id, event=event, event_id=event_id, dedupe_key=dedupe_key, body=body,
        status="pending", attempts=0, next_attempt_at=now, created_at=now,
    )
    db.add(delivery)
    db.flush()
    return delivery

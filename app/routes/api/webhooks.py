"""Webhooks (admin only): register receivers, list their deliveries, send a test, redeliver.

The secret that signs a hook's deliveries is in the answer of ``POST /webhooks`` and of
``POST /webhooks/{id}/secret`` (rotation) only. docs/webhooks.md has the payloads and how a
receiver verifies the signature.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.deps import DB, ApiAdmin
from app.models import Webhook
from app.schemas.webhooks import DeliveryOut, DeliveryStatus, WebhookCreate, WebhookCreated, WebhookOut, WebhookUpdate
from app.services import webhooks

router = APIRouter(tags=["webhooks"])


def _out(hook: Webhook, counts: dict[int, dict[str, int]]) -> WebhookOut:
    return WebhookOut.model_validate(hook).model_copy(update={"deliveries": counts.get(hook.id, {})})


def _created(hook: Webhook) -> WebhookCreated:
    """The hook with its secret: only the answers that create or rotate it use this."""
    return WebhookCreated.model_validate(hook)


@router.get("/webhooks", response_model=list[WebhookOut])
def list_webhooks(db: DB, _: ApiAdmin) -> list[WebhookOut]:
    counts = webhooks.delivery_counts(db)
    return [_out(h, counts) for h in webhooks.list_webhooks(db)]


@router.post("/webhooks", response_model=WebhookCreated, status_code=201)
def create_webhook(body: WebhookCreate, db: DB, admin: ApiAdmin) -> WebhookCreated:
    """Register a hook; the answer holds its signing secret, shown this once."""
    hook = webhooks.create_webhook(db, admin.user, body.url, body.events, name=body.name, is_active=body.is_active)
    db.commit()
    return _created(hook)


@router.get("/webhooks/{webhook_id}", response_model=WebhookOut)
def get_webhook(webhook_id: int, db: DB, _: ApiAdmin) -> WebhookOut:
    return _out(webhooks.get_webhook(db, webhook_id), webhooks.delivery_counts(db))


@router.patch("/webhooks/{webhook_id}", response_model=WebhookOut)
def update_webhook(webhook_id: int, body: WebhookUpdate, db: DB, admin: ApiAdmin) -> WebhookOut:
    hook = webhooks.update_webhook(db, admin.user, webhook_id, **body.model_dump(exclude_unset=True, exclude_none=True))
    db.commit()
    return _out(hook, webhooks.delivery_counts(db))


@router.delete("/webhooks/{webhook_id}", status_code=204)
def delete_webhook(webhook_id: int, db: DB, admin: ApiAdmin) -> Response:
    """Remove a hook and its deliveries."""
    webhooks.delete_webhook(db, admin.user, webhook_id)
    db.commit()
    return Response(status_code=204)


@router.post("/webhooks/{webhook_id}/secret", response_model=WebhookCreated)
def rotate_secret(webhook_id: int, db: DB, admin: ApiAdmin) -> WebhookCreated:
    """A new signing secret (shown this once); the old one stops verifying at once."""
    hook = webhooks.rotate_secret(db, admin.user, webhook_id)
    db.commit()
    return _created(hook)


@router.get("/webhooks/{webhook_id}/deliveries", response_model=list[DeliveryOut])
def list_deliveries(
    webhook_id: int, db: DB, _: ApiAdmin, status: DeliveryStatus | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before_id: int | None = None,
) -> list[DeliveryOut]:
    """The hook's deliveries, newest first (``before_id`` pages back)."""
    rows = webhooks.list_deliveries(db, webhook_id, status=status, limit=limit, before_id=before_id)
    return [DeliveryOut.model_validate(d) for d in rows]


@router.post("/webhooks/{webhook_id}/test", response_model=DeliveryOut, status_code=202)
def send_test(webhook_id: int, db: DB, admin: ApiAdmin) -> DeliveryOut:
    """Queue a ``ping`` delivery to the hook; its outcome shows in the deliveries within seconds."""
    delivery = webhooks.send_test(db, admin.user, webhook_id)
    db.commit()
    return DeliveryOut.model_validate(delivery)


@router.post("/webhooks/deliveries/{delivery_id}/redeliver", response_model=DeliveryOut, status_code=202)
def redeliver(delivery_id: int, db: DB, admin: ApiAdmin) -> DeliveryOut:
    """Send a delivery again from its first attempt (the same body and event id)."""
    delivery = webhooks.redeliver(db, admin.user, delivery_id)
    db.commit()
    return DeliveryOut.model_validate(delivery)

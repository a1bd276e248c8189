"""The Webhooks page: register receivers, send a test, rotate a secret, see the deliveries.

Forms post back to ``/admin/webhooks`` with an ``action`` (app/routes/pages/forms.py);
each handler calls one function of app/services/webhooks.py, which checks the input and
writes the audit entry, as the JSON API does (app/routes/api/webhooks.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app.deps import DB, PageAdmin
from app.models.webhooks import DELIVERY_STATUSES, EVENTS
from app.routes.pages.forms import PageCall, PageForms
from app.services import webhooks

router = APIRouter(include_in_schema=False)


def _page(call: PageCall, status: int = 200, **ctx: Any) -> HTMLResponse:
    params = call.request.query_params
    raw_hook, raw_status = params.get("webhook_id", ""), params.get("status", "")
    hook_id = int(raw_hook) if raw_hook.isdigit() else None
    status_filter = raw_status if raw_status in DELIVERY_STATUSES else None
    hooks = webhooks.list_webhooks(call.db)
    shown = hook_id if hook_id in {h.id for h in hooks} else None
    return call.show(
        "admin/webhooks.html", status,
        hooks=hooks, counts=webhooks.delivery_counts(call.db), events=EVENTS, statuses=DELIVERY_STATUSES,
        deliveries=webhooks.list_deliveries(call.db, shown, status=status_filter, limit=50),
        names={h.id: h.name or h.url for h in hooks}, shown_hook=shown, shown_status=status_filter, **ctx,
    )


WEBHOOKS = PageForms(_page)


@WEBHOOKS.action("create")
def _create(call: PageCall) -> dict[str, Any]:
    events = [e for e in call.form.getlist("events") if isinstance(e, str)] if call.form is not None else []
    hook = webhooks.create_webhook(call.db, call.actor, call.text("url"), events, name=call.text("name"))
    return {"new_secret": hook.secret, "secret_hook": hook.name or hook.url,
            "notice": f"Registered webhook {hook.id} for {', '.join(hook.events)}."}


@WEBHOOKS.action("toggle")
def _toggle(call: PageCall) -> dict[str, Any]:
    hook = webhooks.get_webhook(call.db, call.id("webhook_id"))
    hook = webhooks.update_webhook(call.db, call.actor, hook.id, is_active=not hook.is_active)
    return {"notice": f"Webhook {hook.id} is {'active' if hook.is_active else 'paused'}."}


@WEBHOOKS.action("test")
def _test(call: PageCall) -> dict[str, Any]:
    delivery = webhooks.send_test(call.db, call.actor, call.id("webhook_id"))
    return {"notice": f"Queued test delivery {delivery.id}; reload in a few seconds to see how it went."}


@WEBHOOKS.action("rotate_secret")
def _rotate(call: PageCall) -> dict[str, Any]:
    hook = webhooks.rotate_secret(call.db, call.actor, call.id("webhook_id"))
    return {"new_secret": hook.secret, "secret_hook": hook.name or hook.url,
            "notice": f"Webhook {hook.id} has a new secret; the old one no longer verifies."}


@WEBHOOKS.action("delete")
def _delete(call: PageCall) -> dict[str, Any]:
    hook_id = call.id("webhook_id")
    webhooks.delete_webhook(call.db, call.actor, hook_id)
    return {"notice": f"Deleted webhook {hook_id} and its deliveries."}


@WEBHOOKS.action("redeliver")
def _redeliver(call: PageCall) -> dict[str, Any]:
    delivery = webhooks.redeliver(call.db, call.actor, call.id("delivery_id"))
    return {"notice": f"Delivery {delivery.id} is queued again."}


@router.get("/admin/webhooks", response_class=HTMLResponse)
def webhooks_page(request: Request, db: DB, principal: PageAdmin) -> HTMLResponse:
    return _page(PageCall(request, db, principal))


@router.post("/admin/webhooks", response_class=HTMLResponse)
async def webhooks_post(request: Request, db: DB, principal: PageAdmin) -> Response:
    return await WEBHOOKS.handle(PageCall(request, db, principal))

"""Sending the webhook outbox: claim due deliveries, POST them signed, record how it went.

:class:`Deliverer` works in rounds (:meth:`Deliverer.run_once`): it claims the pending
deliveries that are due, sends them at once (a few threads, so one slow receiver does not
hold up the others), and writes each outcome in its own short transaction:

* a 2xx answer: ``succeeded``, with the code and the start of the answer;
* anything else (an error code, a timeout, a refused connection): another attempt after
  ``webhook_backoff_s * 2 ** (attempts - 1)`` seconds, at most ``webhook_backoff_max_s``,
  until ``webhook_max_attempts`` attempts failed: then ``failed``.

A claim is a conditional update on the row's ``attempts`` (the same on SQLite and
PostgreSQL): it counts the attempt and moves ``next_attempt_at`` past the attempt's
timeout, so two deliverers (two web processes) never send one attempt twice, and a
deliverer that dies mid-attempt leaves a row that becomes due again. The outcome is
written only if the row still shows that attempt. Deliveries are therefore at least once:
receivers dedupe on the body's ``id`` (or the ``X-RLHF-Delivery`` header).

:class:`DeliveryThread` runs a deliverer in the background of each web server process
(app/main.py's lifespan, unless ``RLHF_WEBHOOK_DELIVER=false``). Nothing here runs in a
request or a training round.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import select, update

from app.config import Settings
from app.db import Database
from app.models import Webhook, WebhookDelivery
from app.models.base import utcnow
from app.services.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, signature

log = logging.getLogger(__name__)
EXCERPT_CHARS = 500
USER_AGENT = "rlhf-studio-webhooks/1"
#: how long past the attempt's timeout a claimed row stays claimed
CLAIM_MARGIN_S = 30.0


@dataclass(frozen=True)
class Attempt:
    """A claimed delivery, with what sending it needs (read in the claim's transaction)."""

    delivery_id: int
    attempt: int
    url: str
    secret: str
    event: str
    event_id: str
    body: str


@dataclass(frozen=True)
class Outcome:
    ok: bool
    code: int | None
    excerpt: str


def backoff_s(settings: Settings, attempts: int) -> float:
    """The wait after the ``attempts``-th failed attempt."""
    return min(settings.webhook_backoff_s * 2 ** max(0, attempts - 1), settings.webhook_backoff_max_s)


class Deliverer:
    """Sends due deliveries (``run_once``); one per process is enough."""

    def __init__(self, database: Database, settings: Settings, *, batch: int = 20, threads: int = 4) -> None:
        self.database = database
        self.settings = settings
        self.batch = batch
        self.threads = threads
        self.client = httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False,
                                   headers={"User-Agent": USER_AGENT})

    def close(self) -> None:
        self.client.close()

    def claim(self, now: datetime | None = None) -> list[Attempt]:
        """Claim up to ``batch`` due deliveries of existing hooks (one transaction)."""
        now = now or utcnow()
        until = now + timedelta(seconds=self.settings.webhook_timeout_s + CLAIM_MARGIN_S)
        claimed: list[Attempt] = []
        with self.database.session() as db:
            due = db.execute(
                select(WebhookDelivery.id, WebhookDelivery.attempts, WebhookDelivery.event, WebhookDelivery.event_id,
                       WebhookDelivery.body, Webhook.url, Webhook.secret)
                .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
                .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
                .limit(self.batch)
            ).all()
            for row in due:
                result = db.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id == row.id, WebhookDelivery.status == "pending",
                           WebhookDelivery.attempts == row.attempts)
                    .values(attempts=row.attempts + 1, next_attempt_at=until, last_attempt_at=now)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(Attempt(row.id, row.attempts + 1, row.url, row.secret, row.event, row.event_id,
                                           row.body))
        return claimed

    def send(self, attempt: Attempt) -> Outcome:
        """POST one delivery, signed; never raises."""
        body = attempt.body.encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(attempt.secret, body),
            EVENT_HEADER: attempt.event,
            DELIVERY_HEADER: str(attempt.delivery_id),
        }
        try:
            response = self.client.post(attempt.url, content=body, headers=headers)
        except Exception as exc:  # noqa: BLE001 - httpx.HTTPError mostly; InvalidURL is not one
            return Outcome(False, None, f"{type(exc).__name__}: {exc}"[:EXCERPT_CHARS])
        return Outcome(response.is_success, response.status_code, response.text[:EXCERPT_CHARS])

    def record(self, attempt: Attempt, outcome: Outcome, now: datetime | None = None) -> None:
        """Write an attempt's outcome, if the row still shows this attempt."""
        now = now or utcnow()
        values: dict[str, object] = {"response_code": outcome.code, "response_excerpt": outcome.excerpt}
        if outcome.ok:
            values.update(status="succeeded", delivered_at=now, next_attempt_at=None, error=None)
        else:
            why = f"HTTP {outcome.code}" if outcome.code is not None else outcome.excerpt
            if attempt.attempt >= self.settings.webhook_max_attempts:
                values.update(status="failed", next_attempt_at=None,
                              error=f"{why}; gave up after {attempt.attempt} attempt(s)")
            else:
                wait = backoff_s(self.settings, attempt.attempt)
                values.update(next_attempt_at=now + timedelta(seconds=wait),
                              error=f"{why}; attempt {attempt.attempt} of {self.settings.webhook_max_attempts}, "
                                    f"next in {wait:g} s")
        with self.database.session() as db:
            db.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == attempt.delivery_id, WebhookDelivery.status == "pending",
                       WebhookDelivery.attempts == attempt.attempt)
                .values(**values)
                .execution_options(synchronize_session=False)
            )

    def deliver(self, attempt: Attempt) -> Outcome:
        outcome = self.send(attempt)
        try:
            self.record(attempt, outcome)
        except Exception:  # noqa: BLE001 - the row becomes due again after its claim
            log.exception("webhook delivery %d: could not record the outcome", attempt.delivery_id)
        if not outcome.ok:
            log.info("webhook delivery %d attempt %d failed: %s", attempt.delivery_id, attempt.attempt,
                     outcome.code or outcome.excerpt)
        return outcome

    def run_once(self) -> int:
        """Send what is due now; returns how many attempts were made."""
        attempts = self.claim()
        if len(attempts) <= 1 or self.threads <= 1:
            for attempt in attempts:
                self.deliver(attempt)
        else:
            with ThreadPoolExecutor(min(self.threads, len(attempts)), thread_name_prefix="webhook") as pool:
                list(pool.map(self.deliver, attempts))
        return len(attempts)


class DeliveryThread:
    """A :class:`Deliverer` in a daemon thread, polling every ``webhook_poll_s``."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.deliverer = Deliverer(database, settings)
        self.poll_s = settings.webhook_poll_s
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="webhook-deliverer", daemon=True)

    def start(self) -> DeliveryThread:
        self.thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stopping.set()
        self.thread.join(timeout_s)
        self.deliverer.close()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                busy = self.deliverer.run_once()
            except Exception:  # noqa: BLE001 - a database hiccup; try again at the next poll
                log.exception("webhook deliverer: a round failed")
                busy = 0
            if not busy:
                self.stopping.wait(self.poll_s)

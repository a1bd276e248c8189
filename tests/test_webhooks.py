"""Webhooks against a real local HTTP receiver: the API and its checks, signatures, retries
with backoff, giving up, the four events' payloads, and that a failing receiver never holds
up the request or the run that caused the event."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.config import Settings
from app.db import Database
from app.main import create_app
from app.models import AuditLog, TrainingRun, Webhook, WebhookDelivery
from app.services import workers
from app.services.webhook_delivery import Deliverer, backoff_s
from tests.conftest import Account, login
from tests.factories import make_policy

BACKOFF_S = 0.5  # long enough that the next run_once, even on a loaded machine, comes before it


# --- a real receiver ------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """An HTTP server on a local port that records each POST and answers with the next
    status of ``codes`` (200 once they run out), after ``delay_s``."""

    url: str = ""
    codes: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with state.lock:
                state.received.append(Received(dict(self.headers.items()), body, time.monotonic()))
                code = state.codes.pop(0) if state.codes else 200
            time.sleep(state.delay_s)
            payload = b'{"ok": %s}' % (b"true" if code < 300 else b"false")
            try:
                self.send_response(code)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass  # the deliverer timed out and hung up

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield state
    server.shutdown()
    server.server_close()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/hook"


# --- the app, with fast retries ---------------------------------------------------------


def _fast(settings: Settings, **kw: Any) -> Settings:
    return settings.model_copy(update={
        "webhook_backoff_s": BACKOFF_S, "webhook_max_attempts": 3, "webhook_timeout_s": 2.0,
        "webhook_poll_s": 0.05, "webhook_deliver": False, **kw,
    })


@pytest.fixture
def quiet_client(settings: Settings, database: Database) -> Iterator[TestClient]:
    """The app without its background deliverer: the tests drive a :class:`Deliverer`."""
    with TestClient(create_app(_fast(settings), database), base_url="http://testserver") as c:
        yield c


@pytest.fixture
def deliverer(settings: Settings, database: Database) -> Iterator[Deliverer]:
    d = Deliverer(database, _fast(settings))
    yield d
    d.close()


def _hook(client: TestClient, admin: Account, url: str, events: list[str], **kw: Any) -> dict[str, Any]:
    r = client.post("/api/v1/webhooks", json={"url": url, "events": events, **kw}, headers=admin.headers)
    assert r.status_code == 201, r.text
    return r.json()


def _deliveries(database: Database, hook_id: int | None = None) -> list[WebhookDelivery]:
    with database.session() as db:
        query = select(WebhookDelivery).order_by(WebhookDelivery.id)
        if hook_id is not None:
            query = query.where(WebhookDelivery.webhook_id == hook_id)
        return list(db.scalars(query))


def _until(check: Callable[[], Any], timeout_s: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


def _verify(secret: str, received: Received) -> bool:
    """What a receiver does (docs/webhooks.md), written out independently of the app."""
    expected = "sha256=" + hmac.new(secret.encode(), received.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, received.headers.get("X-RLHF-Signature", ""))


# --- the API --------------------------------------------------------------------------


def test_admin_registers_lists_changes_and_deletes_hooks_with_audit(quiet_client, admin, database) -> None:
    client = quiet_client
    created = _hook(client, admin, "https://example.org/in", ["policy.deployed", "round.finished"], name="ci")
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40
    assert created["events"] == ["round.finished", "policy.deployed"]  # canonical order
    listed = client.get("/api/v1/webhooks", headers=admin.headers).json()
    assert [h["id"] for h in listed] == [created["id"]] and "secret" not in listed[0]
    assert "secret" not in client.get(f"/api/v1/webhooks/{created['id']}", headers=admin.headers).json()

    r = client.patch(f"/api/v1/webhooks/{created['id']}", json={"is_active": False, "events": ["evaluation.finished"]},
                     headers=admin.headers)
    assert r.status_code == 200 and r.json()["is_active"] is False and r.json()["events"] == ["evaluation.finished"]
    assert r.json()["url"] == "https://example.org/in"  # unchanged: not sent

    rotated = client.post(f"/api/v1/webhooks/{created['id']}/secret", headers=admin.headers).json()
    assert rotated["secret"] != created["secret"]
    with database.session() as db:
        assert db.get(Webhook, created["id"]).secret == rotated["secret"]

    assert client.delete(f"/api/v1/webhooks/{created['id']}", headers=admin.headers).status_code == 204
    assert client.get(f"/api/v1/webhooks/{created['id']}", headers=admin.headers).status_code == 404
    with database.session() as db:
        actions = [a.action for a in db.scalars(select(AuditLog).order_by(AuditLog.id)) if a.target_type == "webhook"]
    assert actions == ["webhook.create", "webhook.update", "webhook.rotate_secret", "webhook.delete"]


def test_only_admins_manage_hooks(quiet_client, admin, labeler) -> None:
    hook = _hook(quiet_client, admin, "https://example.org/in", ["round.finished"])
    for method, path in [
        ("GET", "/api/v1/webhooks"), ("POST", "/api/v1/webhooks"), ("GET", f"/api/v1/webhooks/{hook['id']}"),
        ("PATCH", f"/api/v1/webhooks/{hook['id']}"), ("DELETE", f"/api/v1/webhooks/{hook['id']}"),
        ("GET", f"/api/v1/webhooks/{hook['id']}/deliveries"), ("POST", f"/api/v1/webhooks/{hook['id']}/test"),
        ("POST", f"/api/v1/webhooks/{hook['id']}/secret"),
    ]:
        body = {"url": "https://example.org/x", "events": ["round.finished"]} if method in ("POST", "PATCH") else None
        r = quiet_client.request(method, path, json=body, headers=labeler.headers)
        assert r.status_code == 403, (method, path, r.status_code)
    assert quiet_client.get("/api/v1/webhooks").status_code == 401
    assert quiet_client.get("/admin/webhooks", headers=labeler.headers).status_code == 403


@pytest.mark.parametrize(("body", "says"), [
    ({"url": "ftp://example.org/in", "events": ["round.finished"]}, "absolute http:// or https:// URL"),
    ({"url": "not a url", "events": ["round.finished"]}, "absolute http:// or https:// URL"),
    ({"url": "https://example.org/in", "events": ["round.started"]}, "round.finished"),
    ({"url": "https://example.org/in", "events": []}, "at least 1 item"),
    ({"url": "https://example.org/in"}, "events: Field required"),
    ({"url": "https://example.org/in", "events": ["round.finished"], "secret": "mine"}, "Extra inputs"),
])
def test_bad_input_is_422_with_a_clear_message(quiet_client, admin, body, says) -> None:
    r = quiet_client.post("/api/v1/webhooks", json=body, headers=admin.headers)
    assert r.status_code == 422, r.text
    assert says in r.json()["message"], r.json()["message"]


def test_unknown_hook_and_bad_delivery_filter(quiet_client, admin) -> None:
    assert quiet_client.get("/api/v1/webhooks/999", headers=admin.headers).status_code == 404
    assert quiet_client.post("/api/v1/webhooks/999/test", headers=admin.headers).status_code == 404
    hook = _hook(quiet_client, admin, "https://example.org/in", ["round.finished"])
    r = quiet_client.get(f"/api/v1/webhooks/{hook['id']}/deliveries?status=lost", headers=admin.headers)
    assert r.status_code == 422 and "status" in r.json()["message"]
    r = quiet_client.get(f"/api/v1/webhooks/{hook['id']}/deliveries?limit=0", headers=admin.headers)
    assert r.status_code == 422


# --- delivery ---------------------------------------------------------------------------


def test_signed_delivery_retried_with_backoff_until_it_succeeds(quiet_client, admin, receiver, deliverer,
                                                                database) -> None:
    receiver.codes = [500, 502]
    hook = _hook(quiet_client, admin, receiver.url, ["round.finished"])
    queued = quiet_client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=admin.headers)
    assert queued.status_code == 202 and queued.json()["status"] == "pending" and queued.json()["event"] == "ping"

    waits = []
    for attempt in (1, 2, 3):
        assert deliverer.run_once() == 1
        (row,) = _deliveries(database, hook["id"])
        assert row.attempts == attempt
        if attempt < 3:
            assert row.status == "pending" and row.response_code == (500, 502)[attempt - 1]
            assert f"attempt {attempt} of 3, next in {BACKOFF_S * 2 ** (attempt - 1):g} s" in row.error
            waits.append((row.next_attempt_at - row.last_attempt_at).total_seconds())
            assert deliverer.run_once() == 0  # not due before its backoff
            time.sleep(waits[-1] + 0.05)
    # the wait doubles (the error names it), and runs from the end of the attempt (last_attempt_at is its
    # start), so the stored due time is at least that far after the attempt began
    assert waits[0] >= BACKOFF_S and waits[1] >= 2 * BACKOFF_S
    assert row.status == "succeeded" and row.response_code == 200 and row.delivered_at is not None
    assert row.error is None and row.response_excerpt == '{"ok": true}'

    assert len(receiver.received) == 3
    assert len({r.body for r in receiver.received}) == 1  # the same body each attempt
    assert all(_verify(hook["secret"], r) for r in receiver.received)
    assert not _verify("whsec_someone-else", receiver.received[0])
    first = receiver.received[0]
    assert first.headers["X-RLHF-Event"] == "ping" and first.headers["X-RLHF-Delivery"] == str(row.id)
    assert first.headers["Content-Type"] == "application/json"
    assert receiver.bodies()[0]["event"] == "ping" and receiver.bodies()[0]["data"]["webhook_id"] == hook["id"]

    listed = quiet_client.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=admin.headers).json()
    assert [(d["status"], d["attempts"], d["response_code"]) for d in listed] == [("succeeded", 3, 200)]
    assert quiet_client.get(f"/api/v1/webhooks/{hook['id']}", headers=admin.headers).json()["deliveries"][
        "succeeded"] == 1


def test_gives_up_after_the_last_attempt_and_can_redeliver(quiet_client, admin, receiver, deliverer, database) -> None:
    receiver.codes = [503, 503, 503]
    hook = _hook(quiet_client, admin, receiver.url, ["round.finished"])
    refused = _hook(quiet_client, admin, _closed_port_url(), ["round.finished"])
    for h in (hook, refused):
        quiet_client.post(f"/api/v1/webhooks/{h['id']}/test", headers=admin.headers)

    def drained() -> bool:
        deliverer.run_once()
        return all(d.status == "failed" for d in _deliveries(database))

    _until(drained, what="both deliveries failed")
    served, unreachable = _deliveries(database)
    assert served.attempts == 3 and served.response_code == 503 and "gave up after 3 attempt(s)" in served.error
    assert unreachable.attempts == 3 and unreachable.response_code is None and "ConnectError" in unreachable.error
    assert served.next_attempt_at is None and len(receiver.received) == 3
    assert deliverer.run_once() == 0  # nothing is due any more

    r = quiet_client.post(f"/api/v1/webhooks/deliveries/{served.id}/redeliver", headers=admin.headers)
    assert r.status_code == 202 and r.json()["status"] == "pending" and r.json()["attempts"] == 0
    assert deliverer.run_once() == 1
    assert _deliveries(database, hook["id"])[0].status == "succeeded"
    assert receiver.received[-1].body == receiver.received[0].body


def test_backoff_is_capped(settings) -> None:
    fast = _fast(settings, webhook_backoff_s=10.0, webhook_backoff_max_s=60.0)
    assert [backoff_s(fast, n) for n in (1, 2, 3, 4, 5)] == [10.0, 20.0, 40.0, 60.0, 60.0]


def test_an_attempt_is_claimed_once_and_a_lost_claim_is_due_again(quiet_client, admin, receiver, settings,
                                                                 database) -> None:
    hook = _hook(quiet_client, admin, receiver.url, ["round.finished"])
    quiet_client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=admin.headers)
    one, two = Deliverer(database, _fast(settings)), Deliverer(database, _fast(settings))
    try:
        claimed = one.claim()
        assert len(claimed) == 1 and two.claim() == []  # the other deliverer does not send it too
        # the first deliverer died with its claim: once the claim lapses, the row is due again
        (row,) = _deliveries(database)
        later = row.next_attempt_at + timedelta(seconds=1)
        again = two.claim(now=later)
        assert [a.attempt for a in again] == [2]
        one.record(claimed[0], one.send(claimed[0]))  # the stale outcome is not written over the new claim
        assert _deliveries(database)[0].status == "pending"
        two.record(again[0], two.send(again[0]))
        assert _deliveries(database)[0].status == "succeeded"
    finally:
        one.close()
        two.close()


# --- no blocking ------------------------------------------------------------------------


def test_a_failing_receiver_never_holds_up_requests_or_runs(settings, database, admin, receiver) -> None:
    """With the background deliverer on and a receiver that hangs past the timeout, a deploy
    answers at once and a run ends at once; the deliveries fail and retry in the background."""
    receiver.delay_s = 3.0
    receiver.codes = [500] * 10
    app = create_app(_fast(settings, webhook_deliver=True, webhook_timeout_s=1.0, webhook_max_attempts=2), database)
    with TestClient(app, base_url="http://testserver") as client:
        _hook(client, admin, receiver.url, ["policy.deployed", "round.finished"])
        with database.session() as db:
            make_policy(db)
            new = make_policy(db, deployed=False, artifact_path="policies/v1")
            db.add(TrainingRun(prompt_set_ids=[], stages=["sft"]))
        start = time.monotonic()
        r = client.post(f"/api/v1/policies/{new.id}/deploy", headers=admin.headers)
        assert r.status_code == 200 and time.monotonic() - start < 1.0
        assert [d.event for d in _deliveries(database)] == ["policy.deployed"]

        # a worker ends a run while the receiver hangs: the transaction does not wait for it
        with database.session() as db:
            claimed = workers.claim_run(db, "w1")
            assert claimed is not None
            start = time.monotonic()
            assert workers.finish_run(db, claimed[1], "failed", error="boom")
        assert time.monotonic() - start < 1.0
        _until(lambda: len(receiver.received) >= 2, what="both events sent")
        start = time.monotonic()
        assert client.get("/api/v1/webhooks", headers=admin.headers).status_code == 200
        assert time.monotonic() - start < 1.0  # requests go on while deliveries hang
        _until(lambda: all(d.status == "failed" for d in _deliveries(database)), timeout_s=30, what="give up")
    assert all(d.attempts == 2 and "ReadTimeout" in d.error for d in _deliveries(database))


# --- the dashboard page ---------------------------------------------------------------


def test_the_webhooks_page_registers_tests_and_shows_deliveries(quiet_client, admin, receiver, deliverer,
                                                                database) -> None:
    client = quiet_client
    csrf = login(client, "admin")
    form = {"csrf_token": csrf, "action": "create", "name": "<script>alert(1)</script>", "url": receiver.url,
            "events": ["round.finished", "policy.deployed"]}
    assert client.post("/admin/webhooks", data={**form, "csrf_token": "forged"}).status_code == 403
    r = client.post("/admin/webhooks", data=form)
    assert r.status_code == 200 and "Registered webhook" in r.text
    with database.session() as db:
        (hook,) = db.scalars(select(Webhook))
    assert hook.events == ["round.finished", "policy.deployed"]
    assert hook.secret in r.text  # shown once, here ...
    page = client.get("/admin/webhooks")
    assert hook.secret not in page.text  # ... and never again
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text

    bad = client.post("/admin/webhooks", data={**form, "url": "javascript:alert(1)"})
    assert bad.status_code == 422 and "absolute http:// or https:// URL" in bad.text
    assert 'value="javascript:alert(1)"' in bad.text  # the form comes back filled in
    none = client.post("/admin/webhooks", data={"csrf_token": csrf, "action": "create", "url": receiver.url})
    assert none.status_code == 422 and "choose at least one event" in none.text

    receiver.codes = [500]
    r = client.post("/admin/webhooks", data={"csrf_token": csrf, "action": "test", "webhook_id": str(hook.id)})
    assert r.status_code == 200 and "Queued test delivery" in r.text
    deliverer.run_once()
    page = client.get(f"/admin/webhooks?webhook_id={hook.id}")
    assert "HTTP 500; attempt 1 of 3" in page.text and 'data-delivery="' in page.text
    assert _verify(hook.secret, receiver.received[0])

    r = client.post("/admin/webhooks", data={"csrf_token": csrf, "action": "toggle", "webhook_id": str(hook.id)})
    assert "is paused" in r.text
    r = client.post("/admin/webhooks", data={"csrf_token": csrf, "action": "rotate_secret", "webhook_id": str(hook.id)})
    with database.session() as db:
        rotated = db.get(Webhook, hook.id).secret
    assert rotated != hook.secret and rotated in r.text
    r = client.post("/admin/webhooks", data={"csrf_token": csrf, "action": "delete", "webhook_id": str(hook.id)})
    assert "Deleted webhook" in r.text and _deliveries(database) == []
    with database.session() as db:
        actions = {a.action for a in db.scalars(select(AuditLog))}
    assert {"webhook.create", "webhook.test", "webhook.update", "webhook.rotate_secret", "webhook.delete"} <= actions


def test_the_dashboard_sums_up_deliveries(quiet_client, admin, deliverer, database) -> None:
    login(quiet_client, "admin")
    assert 'id="webhook-summary"' not in quiet_client.get("/admin").text
    hook = _hook(quiet_client, admin, _closed_port_url(), ["round.finished"])
    quiet_client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=admin.headers)
    page = " ".join(quiet_client.get("/admin").text.split())
    assert "0 delivered, 1 pending, 0 failed" in page

"""The Webhooks and Playground pages in a real browser: register a hook against a live
receiver, send a test and watch it arrive signed; ask two live policy endpoints at once."""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.browser.conftest import browser_login, screenshot
from tests.live_server import serve_in_thread


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    got: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            got.append((dict(self.headers.items()), self.rfile.read(int(self.headers.get("Content-Length", 0)))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/in", got
    server.shutdown()
    server.server_close()


def test_register_a_webhook_and_send_a_test(page, live_server, admin, receiver) -> None:
    url, got = receiver
    browser_login(page, live_server, "admin")
    page.goto(f"{live_server}/admin/webhooks")
    form = page.locator("#create-webhook form")
    form.locator("input[name=name]").fill("chat-ops")
    form.locator("input[name=url]").fill(url)
    form.locator("input[value='round.finished']").check()
    form.locator("input[value='policy.deployed']").check()
    form.locator("button[type=submit]").click()
    page.wait_for_load_state("networkidle")
    secret = page.locator("#new-secret code").inner_text().strip()
    assert secret.startswith("whsec_")
    row = page.locator("#webhooks tr[data-webhook]")
    assert "round.finished, policy.deployed" in row.inner_text()

    row.locator("button", has_text="Send test").click()
    page.wait_for_load_state("networkidle")
    assert "Queued test delivery" in page.inner_text(".notice")
    for _ in range(60):  # the web process's deliverer polls every 2 s
        page.goto(f"{live_server}/admin/webhooks")
        if "succeeded" in page.locator("#delivery-list").inner_text():
            break
        page.wait_for_timeout(500)
    assert "succeeded" in page.locator("#delivery-list").inner_text() and secret not in page.content()
    headers, body = got[0]
    assert headers["X-RLHF-Signature"] == "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    screenshot(page, "admin-webhooks")


def test_playground_asks_two_endpoints(page, live_server, admin, tiny_base: Path, single_torch_thread) -> None:
    from trainer.serve import PolicyServer, create_app

    with serve_in_thread(create_app(PolicyServer(tiny_base, "v0")), 60) as a, \
            serve_in_thread(create_app(PolicyServer(tiny_base, "v1")), 60) as b:
        browser_login(page, live_server, "admin")
        page.goto(f"{live_server}/admin/playground")
        page.fill("input[name=endpoint_a]", a)
        page.fill("input[name=endpoint_b]", b)
        page.fill("input[name=max_tokens]", "6")
        page.fill("textarea[name=prompt]", "Say hello")
        page.click("#playground-form button[type=submit]")
        page.wait_for_load_state("networkidle")
        sides = page.locator("#replies .reply")
        assert sides.count() == 2
        assert sides.nth(0).locator("h2").inner_text() == "A: v0" and sides.nth(1).locator("h2").inner_text() == "B: v1"
        assert page.locator("#replies [role=alert]").count() == 0
        screenshot(page, "admin-playground")

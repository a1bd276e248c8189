"""The login page in a real browser."""

from __future__ import annotations

from tests.browser.conftest import browser_login, screenshot


def test_admin_logs_in_and_out(page, live_server, admin) -> None:
    browser_login(page, live_server, "admin")
    assert page.url.endswith("/admin")
    screenshot(page, "admin-home")
    page.click("text=Log out")
    page.wait_for_url("**/login")
    page.goto(f"{live_server}/admin")
    assert "/login" in page.url


def test_wrong_password_shows_error(page, live_server, admin) -> None:
    browser_login(page, live_server, "admin", "wrong-password")
    assert page.locator(".error").inner_text() == "Invalid username or password."

"""Login, sessions, CSRF, roles, tokens and the 401/403 rules of the Foundation issue."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from app.deps import SESSION_COOKIE
from tests.conftest import PASSWORD, login


def test_login_page_and_anonymous_redirects(client: TestClient) -> None:
    r = client.get("/login")
    assert r.status_code == 200 and "Log in" in r.text
    r = client.get("/admin", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    r = client.get("/label", follow_redirects=False)
    assert r.status_code == 303


def test_anonymous_api_is_401(client: TestClient) -> None:
    r = client.get("/api/v1/users")
    assert r.status_code == 401
    assert r.json()["detail"] == "authentication required"


def test_login_sets_httponly_samesite_cookie_and_lands_on_role_home(client, admin) -> None:
    r = client.post("/login", data={"username": "admin", "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin"
    cookie = r.headers["set-cookie"]
    assert SESSION_COOKIE in cookie and "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
    assert client.get("/admin").status_code == 200


def test_wrong_password_unknown_user_and_disabled_user_look_the_same(client, admin, make_account) -> None:
    bob = make_account("labeler", "bob")
    client.patch(f"/api/v1/users/{bob.id}", json={"is_active": False}, headers=admin.headers)
    answers = []
    for username, password in (("admin", "wrong-password"), ("nobody", PASSWORD), ("bob", PASSWORD)):
        r = client.post("/login", data={"username": username, "password": password})
        answers.append((r.status_code, "Invalid username or password." in r.text))
    assert answers == [(401, True)] * 3


def test_repeated_failed_logins_are_throttled(client, admin) -> None:
    for _ in range(5):
        assert client.post("/login", data={"username": "admin", "password": "nope-nope"}).status_code == 401
    r = client.post("/login", data={"username": "admin", "password": PASSWORD})
    assert r.status_code == 429 and "too many failed logins" in r.text


def _session_cookie(client: TestClient) -> str:
    values = [c.value for c in client.cookies.jar if c.name == SESSION_COOKIE]
    assert len(values) == 1
    return values[0]


def test_new_session_id_at_login_and_logout_invalidates(client, admin) -> None:
    csrf = login(client, "admin")
    first = _session_cookie(client)
    csrf = login(client, "admin")
    second = _session_cookie(client)
    assert second != first
    # The old session id no longer works.
    stale = TestClient(client.app)
    stale.cookies.set(SESSION_COOKIE, first)
    assert stale.get("/admin", follow_redirects=False).status_code == 303
    r = client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    replay = TestClient(client.app)
    replay.cookies.set(SESSION_COOKIE, second)
    assert replay.get("/admin", follow_redirects=False).status_code == 303


def test_form_post_without_csrf_is_403(client, admin) -> None:
    login(client, "admin")
    assert client.post("/logout", data={}).status_code == 403
    assert client.post("/logout", data={"csrf_token": "forged"}).status_code == 403


def test_cookie_api_writes_need_csrf_header_tokens_do_not(client, admin) -> None:
    csrf = login(client, "admin")
    body = {"username": "carol", "password": "long-enough-pw", "role": "labeler"}
    assert client.post("/api/v1/users", json=body).status_code == 403
    r = client.post("/api/v1/users", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201
    fresh = TestClient(client.app)
    body["username"] = "dave"
    assert fresh.post("/api/v1/users", json=body, headers=admin.headers).status_code == 201


def test_labeler_is_403_on_admin_page_and_api(client, labeler) -> None:
    login(client, labeler.username)
    assert client.get("/admin").status_code == 403
    assert client.get("/label").status_code == 200
    r = client.get("/api/v1/users", headers=labeler.headers)
    assert r.status_code == 403 and r.json()["detail"] == "admin role required"


def test_revoked_and_unknown_tokens_are_401(client, admin, labeler) -> None:
    assert client.get("/api/v1/me", headers=labeler.headers).status_code == 200
    tokens = client.get("/api/v1/tokens", params={"user_id": labeler.id}, headers=admin.headers).json()
    assert tokens and all("token_hash" not in t for t in tokens)
    client.post(f"/api/v1/tokens/{tokens[0]['id']}/revoke", headers=admin.headers)
    assert client.get("/api/v1/me", headers=labeler.headers).status_code == 401
    assert client.get("/api/v1/me", headers={"Authorization": "Bearer rlhf_unknown"}).status_code == 401
    assert client.get("/api/v1/me", headers={"Authorization": "Basic abc"}).status_code == 401


def test_passwords_and_tokens_are_stored_hashed(database, admin) -> None:
    from sqlalchemy import select

    from app.models import ApiToken, User

    with database.session() as db:
        user = db.scalar(select(User).where(User.username == "admin"))
        assert user.password_hash.startswith("$argon2") and PASSWORD not in user.password_hash
        stored = db.scalars(select(ApiToken.token_hash)).all()
        assert admin.token not in stored and len(stored[0]) == 64


def test_open_redirect_is_refused(client, admin) -> None:
    r = client.post(
        "/login",
        data={"username": "admin", "password": PASSWORD, "next": "//evil.example/"},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/admin"


def test_templates_autoescape(client) -> None:
    r = client.get("/login", params={"next": '/x"><script>alert(1)</script>'})
    assert "<script>alert(1)</script>" not in r.text
    assert re.search(r"&lt;script&gt;|&#34;&gt;", r.text)


def test_a_token_records_when_it_was_last_used_at_most_once_a_minute(client, database, labeler) -> None:
    from datetime import timedelta

    from sqlalchemy import select, update

    from app.models import ApiToken

    def last_used():  # type: ignore[no-untyped-def]
        with database.session() as db:
            return db.scalar(select(ApiToken.last_used_at).where(ApiToken.user_id == labeler.id))

    assert client.get("/api/v1/me", headers=labeler.headers).status_code == 200
    first = last_used()
    assert first is not None
    assert client.get("/api/v1/me", headers=labeler.headers).status_code == 200
    assert last_used() == first  # within the minute: no write
    with database.session() as db:
        db.execute(update(ApiToken).where(ApiToken.user_id == labeler.id).values(last_used_at=first - timedelta(minutes=5)))
        db.commit()
    assert client.get("/api/v1/me", headers=labeler.headers).status_code == 200
    assert last_used() > first - timedelta(minutes=5)

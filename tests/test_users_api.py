"""Users and tokens through the JSON API, and the health check."""

from __future__ import annotations

from sqlalchemy import select

from app.models import AuditLog


def test_admin_creates_user_and_token_shown_once(client, admin, database) -> None:
    r = client.post(
        "/api/v1/users",
        json={"username": "erin", "password": "long-enough-pw", "role": "labeler"},
        headers=admin.headers,
    )
    assert r.status_code == 201
    user = r.json()
    assert user["username"] == "erin" and user["role"] == "labeler" and "password" not in user
    r = client.post(f"/api/v1/users/{user['id']}/tokens", json={"name": "script"}, headers=admin.headers)
    assert r.status_code == 201
    token = r.json()["token"]
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["username"] == "erin"
    listed = client.get("/api/v1/tokens", headers=admin.headers).json()
    assert all("token" not in t for t in listed)
    with database.session() as db:
        actions = db.scalars(select(AuditLog.action)).all()
    assert "user.create" in actions and "token.create" in actions


def test_duplicate_user_is_409_and_bad_body_is_422_naming_the_field(client, admin) -> None:
    body = {"username": "frank", "password": "long-enough-pw", "role": "labeler"}
    assert client.post("/api/v1/users", json=body, headers=admin.headers).status_code == 201
    r = client.post("/api/v1/users", json=body, headers=admin.headers)
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    r = client.post("/api/v1/users", json={**body, "username": "g", "role": "boss"}, headers=admin.headers)
    assert r.status_code == 422 and "role" in r.json()["message"]
    r = client.post(
        "/api/v1/users",
        content=b'{"username": "x", ',
        headers={**admin.headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 422 and "body" in r.json()["message"]


def test_health_ok_and_503_when_database_is_unreachable(client, settings) -> None:
    r = client.get("/api/v1/health")
    assert r.status_code == 200 and r.json()["database"] == "ok"
    from fastapi.testclient import TestClient

    from app.db import Database
    from app.main import create_app

    bad = settings.model_copy(
        update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=1"}
    )
    with TestClient(create_app(bad, Database(bad.resolved_database_url))) as c:
        r = c.get("/api/v1/health")
    assert r.status_code == 503 and r.json()["database"] == "unreachable"


def test_an_admin_cannot_disable_themselves_or_change_their_own_role(client, admin, make_account, database) -> None:
    """The guard lives in the service, so the API refuses what the People page refuses."""
    r = client.patch(f"/api/v1/users/{admin.id}", json={"is_active": False}, headers=admin.headers)
    assert r.status_code == 422 and "cannot disable yourself" in r.json()["detail"]
    r = client.patch(f"/api/v1/users/{admin.id}", json={"role": "labeler"}, headers=admin.headers)
    assert r.status_code == 422 and "own role" in r.json()["detail"]
    assert client.get("/api/v1/me", headers=admin.headers).json()["is_active"] is True
    # Their own password, and other admins, they may still change.
    r = client.patch(f"/api/v1/users/{admin.id}", json={"password": "a-new-long-password"}, headers=admin.headers)
    assert r.status_code == 200
    other = make_account("admin", "second")
    r = client.patch(f"/api/v1/users/{other.id}", json={"is_active": False}, headers=admin.headers)
    assert r.status_code == 200 and r.json()["is_active"] is False
    with database.session() as db:
        updates = db.execute(
            select(AuditLog.target_id, AuditLog.detail).where(AuditLog.action == "user.update").order_by(AuditLog.id)
        ).all()
    assert [(t, d) for t, d in updates] == [(str(admin.id), {"password": "reset"}), (str(other.id), {"is_active": False})]

"""Issue 8's authorization matrix and session checks.

The matrix is generated from the application's route table, so a route added later is
covered without touching this file: every route is called as anonymous, labeler and admin.
Routes open to labelers are listed here on purpose; any other route is admin-only.
"""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from tests.conftest import Account, login

PUBLIC = {("GET", "/api/v1/health"), ("GET", "/login"), ("POST", "/login"), ("GET", "/")}
# labelers also start conversations in conversation sets (POST /prompt-sets/{id}/seeds)
LABELER_API = re.compile(r"^/api/v1/(me|tasks(/.*)?|prompt-sets/\{[^}]+\}/seeds)$")
LABELER_PAGES = re.compile(r"^/(label(/.*)?|logout)$")
MISSING_ID = "987654"


def _walk(routes, prefix: str = ""):  # type: ignore[no-untyped-def]
    """Every APIRoute with its full path; FastAPI >= 0.16x keeps included routers lazily."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route.methods
        elif hasattr(route, "original_router"):
            yield from _walk(route.original_router.routes, prefix + route.include_context.prefix)


def _routes(app) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    out = set()
    for path, methods in _walk(app.routes):
        for method in methods - {"HEAD", "OPTIONS"}:
            out.add((method, path))
    return sorted(out)


def _url(path: str) -> str:
    return re.sub(r"\{[^}]+\}", MISSING_ID, path)


def _call(client: TestClient, method: str, path: str, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    kwargs: dict = {"headers": headers or {}, "follow_redirects": False}
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        kwargs["json"] = {}
    return client.request(method, _url(path), **kwargs)


def test_route_table_is_not_empty(app) -> None:
    routes = _routes(app)
    assert ("POST", "/api/v1/tasks/next") in routes and ("POST", "/api/v1/training/rounds") in routes
    assert len(routes) > 30


def test_anonymous_gets_401_on_api_and_login_redirect_on_pages(app, client) -> None:
    failures = []
    for method, path in _routes(app):
        if (method, path) in PUBLIC:
            continue
        r = _call(client, method, path)
        if path.startswith("/api/"):
            ok = r.status_code == 401
        else:
            ok = r.status_code == 303 and r.headers["location"].startswith("/login")
        if not ok:
            failures.append(f"{method} {path}: {r.status_code}")
    assert not failures, "routes reachable without login:\n" + "\n".join(failures)


def test_labeler_is_refused_everywhere_outside_the_labeler_routes(app, client, labeler) -> None:
    csrf = login(client, labeler.username)
    failures = []
    for method, path in _routes(app):
        if (method, path) in PUBLIC:
            continue
        if path.startswith("/api/"):
            r = _call(client, method, path, labeler.headers)
            allowed = bool(LABELER_API.match(path))
        else:
            r = _call(client, method, path, {"X-CSRF-Token": csrf})
            allowed = bool(LABELER_PAGES.match(path))
        if allowed and r.status_code in (401, 403):
            failures.append(f"{method} {path}: labeler refused with {r.status_code}")
        if not allowed and r.status_code != 403:
            failures.append(f"{method} {path}: labeler got {r.status_code}, expected 403")
    assert not failures, "\n".join(failures)


def test_admin_is_let_through_everywhere(app, client, admin) -> None:
    csrf = login(client, admin.username)
    failures = []
    for method, path in _routes(app):
        if path.startswith("/api/"):
            r = _call(client, method, path, admin.headers)
        else:
            if path == "/logout":
                continue  # would end the session the rest of the loop uses
            r = _call(client, method, path, {"X-CSRF-Token": csrf})
        if r.status_code in (401, 403) or r.status_code >= 500:
            failures.append(f"{method} {path}: admin got {r.status_code}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("method,path", [("POST", "/logout")])
def test_page_posts_without_csrf_are_403(client, admin, method, path) -> None:
    login(client, admin.username)
    assert client.request(method, path, data={}).status_code == 403


def test_every_page_form_post_checks_csrf(app, client, admin) -> None:
    """A session without the CSRF token is refused on every page POST."""
    login(client, admin.username)
    failures = []
    for method, path in _routes(app):
        if path.startswith("/api/") or method != "POST" or (method, path) in PUBLIC:
            continue
        r = client.post(_url(path), data={"csrf_token": "forged"}, follow_redirects=False)
        if r.status_code != 403:
            failures.append(f"POST {path}: {r.status_code}")
    assert not failures, "page posts that skip the CSRF check:\n" + "\n".join(failures)


def test_cookie_api_writes_without_csrf_header_are_403(app, client, admin) -> None:
    login(client, admin.username)
    failures = []
    for method, path in _routes(app):
        if not path.startswith("/api/") or method == "GET" or (method, path) in PUBLIC:
            continue
        r = client.request(method, _url(path), json={})
        if r.status_code != 403:
            failures.append(f"{method} {path}: {r.status_code}")
    assert not failures, "\n".join(failures)


def test_disabling_a_user_ends_their_sessions_and_tokens_at_once(client, admin, labeler) -> None:
    other = TestClient(client.app)
    login(other, labeler.username)
    assert other.get("/label").status_code == 200
    client.patch(f"/api/v1/users/{labeler.id}", json={"is_active": False}, headers=admin.headers)
    assert other.get("/label", follow_redirects=False).status_code == 303
    assert client.get("/api/v1/me", headers=labeler.headers).status_code == 401


HUGE = str(2**64)


def test_out_of_range_ids_are_refused_not_a_server_error(app, client, admin, labeler) -> None:
    """Ids past what the database's integer columns hold answer 4xx (SQLite raises
    OverflowError, PostgreSQL a DataError), on every API route and page with an id."""
    client.raise_server_exceptions = False
    csrf = login(client, admin.username)
    failures = []
    for method, path in _routes(app):
        if "{" not in path:
            continue
        url = re.sub(r"\{[^}]+\}", HUGE, path)
        if path.startswith("/api/"):
            r = client.request(method, url, headers=admin.headers, json={} if method != "GET" else None)
        else:
            r = client.request(method, url, data={"csrf_token": csrf} if method == "POST" else None)
        if r.status_code >= 500 or r.status_code < 400:
            failures.append(f"{method} {path}: {r.status_code}")
    for body in ({"prompt_set_id": int(HUGE), "kind": "rank"},):
        r = client.post("/api/v1/tasks/next", json=body, headers=labeler.headers)
        if r.status_code >= 500:
            failures.append(f"POST /api/v1/tasks/next {body}: {r.status_code}")
    r = client.post("/api/v1/training/rounds", json={"prompt_set_ids": [int(HUGE)]}, headers=admin.headers)
    if r.status_code >= 500:
        failures.append(f"POST /api/v1/training/rounds: {r.status_code}")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- paths

PATH_LIKE = re.compile(
    r"(^|_)(path|paths|dir|dirs|directory|folder|file|files|filename|filepath|artifact|artifacts|"
    r"checkpoint|checkpoints|location|uri|url|base_model|output)($|_)",
    re.IGNORECASE,
)


# The one input that is a URL by design: the webhook receiver, an outbound http(s) address.
# webhooks.check_url refuses every other scheme (file:// included): checked below and in tests/test_webhooks.py.
OUTBOUND_URLS = {("/api/v1/webhooks", "url"), ("/api/v1/webhooks/{webhook_id}", "url")}


def _input_fields(doc: dict, schema: object, seen: set[str]) -> list[tuple[str, dict]]:
    """Every (property name, schema) reachable from ``schema``, following $refs."""
    out: list[tuple[str, dict]] = []
    if isinstance(schema, list):
        for item in schema:
            out += _input_fields(doc, item, seen)
        return out
    if not isinstance(schema, dict):
        return out
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if ref in seen:
            return out
        seen.add(ref)
        target = doc
        for part in ref.lstrip("#/").split("/"):
            target = target[part]
        return _input_fields(doc, target, seen)
    for name, sub in (schema.get("properties") or {}).items():
        out.append((name, sub))
        out += _input_fields(doc, sub, seen)
    for key in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "prefixItems"):
        if key in schema:
            out += _input_fields(doc, schema[key], seen)
    return out


def test_no_api_input_names_a_filesystem_path(client, admin: Account) -> None:
    """Artifacts are addressed by id and version only: no parameter or request-body field of
    the API takes a path, directory, file name or URL (the prompt upload's ``file`` is the
    uploaded bytes, ``format: binary``; a webhook's ``url`` is an outbound http(s) URL, and a
    file:// one is refused)."""
    doc = client.get("/openapi.json").json()
    offenders = []
    walked: set[str] = set()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for param in op.get("parameters", []):
                if PATH_LIKE.search(param["name"]):
                    offenders.append(f"{method.upper()} {path}: parameter {param['name']}")
            for media, content in (op.get("requestBody") or {}).get("content", {}).items():
                for name, sub in _input_fields(doc, content.get("schema", {}), set()):
                    walked.add(name)
                    if name == "file" and media == "multipart/form-data" and sub.get("format") == "binary":
                        continue
                    if (path, name) in OUTBOUND_URLS:
                        continue
                    if PATH_LIKE.search(name) or sub.get("format") in ("path", "uri", "file-path"):
                        offenders.append(f"{method.upper()} {path}: body field {name} ({media})")
    assert {"prompt_set_ids", "ranking", "password", "temperature", "file"} <= walked  # the walk reaches nested fields
    assert not offenders, "API inputs that look like filesystem paths:\n" + "\n".join(offenders)
    local = client.post("/api/v1/webhooks", json={"url": "file:///etc/passwd", "events": ["round.finished"]},
                        headers=admin.headers)
    assert local.status_code == 422 and "http:// or https://" in local.text
    deploy = doc["paths"]["/api/v1/policies/{policy_id}/deploy"]["post"]
    assert "requestBody" not in deploy, "a policy is deployed by id alone"


def test_round_config_takes_no_paths(client, admin) -> None:
    from app.services import training
    from app.services.errors import Invalid

    for key in training.ROUND_CONFIG.values():
        assert not PATH_LIKE.search(key.name), key.name
        values = [key.default, *(key.choices or ())]
        assert not [v for v in values if isinstance(v, str) and ("/" in v or "\\" in v or v.startswith("."))], key
    for sneaky in ({"output_dir": "/tmp/x"}, {"base_model": "/etc"}, {"sft_lr": "../../etc/passwd"}):
        with pytest.raises(Invalid):
            training.validate_config(sneaky)
    set_id = client.post("/api/v1/prompt-sets", json={"name": "p"}, headers=admin.headers).json()["id"]
    r = client.post(
        "/api/v1/training/rounds", json={"prompt_set_ids": [set_id], "config": {"output_dir": "/tmp/evil"}},
        headers=admin.headers,
    )
    assert r.status_code == 422 and "unknown config key" in r.json()["detail"]
    assert client.get("/api/v1/training/runs", headers=admin.headers).json() == []


def test_stored_artifact_paths_cannot_leave_the_artifacts_directory(tmp_path) -> None:
    from trainer import artifacts

    assert artifacts.policy_rel_path(3) == "policies/v3" and artifacts.reward_model_rel_path(2) == "reward_models/v2"
    assert artifacts.resolve(tmp_path, "policies/v3") == (tmp_path / "policies" / "v3").resolve()
    for escape in ("../outside", "/etc", "policies/../../x"):
        with pytest.raises(ValueError):
            artifacts.resolve(tmp_path, escape)


# ---------------------------------------------------------------- sessions


def test_password_reset_and_demotion_take_effect_at_once(client, admin, make_account) -> None:
    """Sessions and tokens are checked against the user row on every request: a reset
    password ends the sessions, a demoted admin loses the admin side in the same second."""
    from tests.conftest import PASSWORD

    carol = make_account("labeler", "carol")
    boss = make_account("admin", "boss")
    carol_browser, boss_browser = TestClient(client.app), TestClient(client.app)
    login(carol_browser, "carol")
    login(boss_browser, "boss")
    assert carol_browser.get("/label").status_code == 200 and boss_browser.get("/admin").status_code == 200

    r = client.patch(f"/api/v1/users/{carol.id}", json={"password": "a-brand-new-pw"}, headers=admin.headers)
    assert r.status_code == 200
    assert carol_browser.get("/label", follow_redirects=False).status_code == 303
    assert client.post("/login", data={"username": "carol", "password": PASSWORD}).status_code == 401
    login(TestClient(client.app), "carol", "a-brand-new-pw")

    client.patch(f"/api/v1/users/{boss.id}", json={"role": "labeler"}, headers=admin.headers)
    assert boss_browser.get("/admin").status_code == 403
    assert client.get("/api/v1/users", headers=boss.headers).status_code == 403


def test_session_cookie_and_csrf_token_cannot_be_forged_or_swapped(client, admin, labeler) -> None:
    from app.deps import SESSION_COOKIE

    csrf_admin = login(client, admin.username)
    other = TestClient(client.app)
    csrf_other = login(other, labeler.username)
    assert csrf_other != csrf_admin
    # One session's CSRF token does not work with another session's cookie.
    body = {"username": "mallory", "password": "long-enough-pw", "role": "admin"}
    assert client.post("/api/v1/users", json=body, headers={"X-CSRF-Token": csrf_other}).status_code == 403
    assert client.post("/logout", data={"csrf_token": csrf_other}).status_code == 403
    # A cookie whose signature does not match is no session at all.
    cookie = next(c.value for c in client.cookies.jar if c.name == SESSION_COOKIE)
    session_id, _, signature = cookie.rpartition(".")
    forged = TestClient(client.app)
    forged.cookies.set(SESSION_COOKIE, f"{session_id}.{'A' * len(signature)}")
    assert forged.get("/admin", follow_redirects=False).status_code == 303
    assert forged.get("/api/v1/me").status_code == 401
    forged.cookies.set(SESSION_COOKIE, "not-a-session")
    assert forged.get("/api/v1/me").status_code == 401


def test_logged_out_and_expired_sessions_are_refused(client, admin, database) -> None:
    from sqlalchemy import update

    from app.models import UserSession
    from app.models.base import utcnow

    csrf = login(client, admin.username)
    assert client.get("/api/v1/me").status_code == 200
    with database.session() as db:
        db.execute(update(UserSession).values(expires_at=utcnow()))
    assert client.get("/api/v1/me").status_code == 401
    assert client.get("/admin", follow_redirects=False).status_code == 303

    csrf = login(client, admin.username)
    kept = dict(client.cookies)
    assert client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    replay = TestClient(client.app, cookies=kept)
    body = {"username": "late", "password": "long-enough-pw", "role": "labeler"}
    assert replay.post("/api/v1/users", json=body, headers={"X-CSRF-Token": csrf}).status_code == 401


def test_security_headers_on_pages_and_api(client, admin) -> None:
    from app.main import CONTENT_SECURITY_POLICY

    login(client, admin.username)
    for url in ("/login", "/admin", "/admin/prompt-sets", "/label", "/api/v1/health", "/static/app.js"):
        r = client.get(url)
        assert r.headers["x-content-type-options"] == "nosniff", url
        assert r.headers["x-frame-options"] == "DENY" and r.headers["referrer-policy"] == "same-origin", url
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, url
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY and "unsafe-eval" not in CONTENT_SECURITY_POLICY
    # Swagger UI loads its bundle from a CDN with an inline bootstrap script: no CSP there.
    assert "content-security-policy" not in client.get("/docs").headers

"""The `rlhf` CLI as a user runs it: a subprocess with RLHF_ settings in the environment."""

from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy import select

from app.models import User


def rlhf(args: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


def test_users_and_tokens_from_the_cli(db_url, database, tmp_path, client) -> None:
    env = {"RLHF_DATABASE_URL": db_url, "RLHF_DATA_DIR": str(tmp_path)}
    r = rlhf(["db", "upgrade"], env)
    assert r.returncode == 0, r.stderr
    r = rlhf(["users", "create", "gina", "--role", "admin"], env, stdin="a-long-password\n")
    assert r.returncode == 0, r.stderr
    assert "created admin 'gina'" in r.stdout
    with database.session() as db:
        user = db.scalar(select(User).where(User.username == "gina"))
        assert user is not None and user.role == "admin"
    r = rlhf(["users", "create", "gina"], env, stdin="a-long-password\n")
    assert r.returncode == 1 and "already exists" in r.stderr
    r = rlhf(["users", "create", "hank"], env, stdin="short\n")
    assert r.returncode == 1 and "at least 8" in r.stderr
    r = rlhf(["tokens", "create", "gina"], env)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip().splitlines()[-1]
    assert token.startswith("rlhf_")
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["username"] == "gina"
    r = rlhf(["tokens", "create", "nobody"], env)
    assert r.returncode == 1 and "no user named" in r.stderr

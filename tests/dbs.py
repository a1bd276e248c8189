"""Test databases: a migrated template per backend, copied fresh for each test."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from app import migrate

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_url() -> str | None:
    """RLHF_TEST_DATABASE_URL, else the local server when one answers on 127.0.0.1:5432."""
    url = os.environ.get("RLHF_TEST_DATABASE_URL")
    if url:
        return url if url.startswith("postgresql") else None
    if os.environ.get("RLHF_TEST_SKIP_POSTGRES"):
        return None
    try:
        with psycopg.connect(_libpq(DEFAULT_PG), connect_timeout=2):
            return DEFAULT_PG
    except Exception:
        return None


def _libpq(url: str, dbname: str | None = None) -> str:
    u = make_url(url)
    if dbname:
        u = u.set(database=dbname)
    return u.set(drivername="postgresql").render_as_string(hide_password=False)


def _admin_conn(url: str) -> psycopg.Connection:
    return psycopg.connect(_libpq(url), autocommit=True)


def with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


class PostgresFactory:
    """Creates databases on the server of ``base_url``; each one dropped afterwards."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.template = f"rlhf_tmpl_{uuid.uuid4().hex[:10]}"
        with _admin_conn(base_url) as conn:
            conn.execute(f'CREATE DATABASE "{self.template}"')
        migrate.upgrade(with_database(base_url, self.template))

    def create(self, migrated: bool = True) -> str:
        name = f"rlhf_t_{uuid.uuid4().hex[:12]}"
        with _admin_conn(self.base_url) as conn:
            if migrated:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
            else:
                conn.execute(f'CREATE DATABASE "{name}"')
        return with_database(self.base_url, name)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        with _admin_conn(self.base_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        with _admin_conn(self.base_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')


class SqliteFactory:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.template = root / "template.db"
        migrate.upgrade(f"sqlite:///{self.template}")

    def create(self, migrated: bool = True) -> str:
        path = self.root / f"t_{uuid.uuid4().hex[:12]}.db"
        if migrated:
            shutil.copyfile(self.template, path)
        return f"sqlite:///{path}"

    def drop(self, url: str) -> None:
        path = Path(url.split("///", 1)[1])
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

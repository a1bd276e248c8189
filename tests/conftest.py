"""Shared fixtures. Every test that takes ``database`` runs on SQLite and on PostgreSQL
(when RLHF_TEST_DATABASE_URL is set or a server answers on 127.0.0.1:5432)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.config import Settings  # noqa: E402
from app.db import Database  # noqa: E402
from app.main import create_app  # noqa: E402
from app.services import tokens, users  # noqa: E402
from tests.dbs import PostgresFactory, SqliteFactory, postgres_url  # noqa: E402

PASSWORD = "correct-horse-battery"
BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def sqlite_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteFactory]:
    factory = SqliteFactory(tmp_path_factory.mktemp("sqlite"))
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def postgres_factory() -> Iterator[PostgresFactory | None]:
    url = postgres_url()
    if url is None:
        yield None
        return
    factory = PostgresFactory(url)
    yield factory
    factory.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def db_factory(
    backend: str, request: pytest.FixtureRequest
) -> SqliteFactory | PostgresFactory:
    if backend == "sqlite":
        return request.getfixturevalue("sqlite_factory")
    factory = request.getfixturevalue("postgres_factory")
    if factory is None:
        pytest.skip("no PostgreSQL (set RLHF_TEST_DATABASE_URL)")
    return factory


@pytest.fixture
def db_url(db_factory: SqliteFactory | PostgresFactory) -> Iterator[str]:
    url = db_factory.create()
    yield url
    db_factory.drop(url)


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    yield db
    db.dispose()


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        artifacts_dir=tmp_path / "artifacts",
        secret_key="test-secret-key-not-for-production",
    )


@pytest.fixture
def app(settings: Settings, database: Database) -> FastAPI:
    return create_app(settings, database)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url="http://testserver") as c:
        yield c


@dataclass
class Account:
    id: int
    username: str
    password: str
    role: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def make_account(database: Database) -> Callable[..., Account]:
    counter = {"n": 0}

    def make(role: str = "labeler", username: str | None = None) -> Account:
        counter["n"] += 1
        name = username or f"{role}{counter['n']}"
        with database.session() as db:
            user = users.create_user(db, name, PASSWORD, role)
            _, plaintext = tokens.create_token(db, user, "test")
            return Account(user.id, name, PASSWORD, role, plaintext)

    return make


@pytest.fixture
def admin(make_account: Callable[..., Account]) -> Account:
    return make_account("admin", "admin")


@pytest.fixture
def labeler(make_account: Callable[..., Account]) -> Account:
    return make_account("labeler", "alice")


def login(client: TestClient, username: str, password: str = PASSWORD) -> str:
    """Log in through the form; returns the CSRF token of the new session."""
    r = client.post("/login", data={"username": username, "password": password}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = client.get(r.headers["location"])
    import re

    m = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert m, "page has no CSRF meta tag"
    return m.group(1)


# ------------------------------------------------------------------ training rounds
# Shared by the tests that run rounds (helpers in tests/round_helpers.py).


@pytest.fixture
def single_torch_thread() -> Iterator[None]:
    """One intra-op thread: the tiny model gains nothing from more, and on a busy 2-core
    machine a 2-thread barrier makes every op wait (see docs/training.md). A module that
    trains opts in: ``pytestmark = pytest.mark.usefixtures("single_torch_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama checkpoint (the base policy v0 is copied from it)."""
    from trainer.tiny import build_tiny_policy

    return build_tiny_policy(tmp_path_factory.mktemp("tiny-base") / "tiny")


# ------------------------------------------------------------------ the live loop
# The service on a real port and a trainer worker beside it, for the tests that drive the
# whole loop over HTTP (simulated labelers). The module provides ``loop_settings``.


@pytest.fixture
def server(loop_settings: Settings, database: Database) -> Iterator[str]:
    from tests.live_server import serve_in_thread

    with serve_in_thread(create_app(loop_settings, database)) as url:
        yield url


@pytest.fixture
def worker(loop_settings: Settings, database: Database, tiny_base: Path) -> Iterator[object]:
    import threading

    from tests.round_helpers import bootstrap_v0
    from trainer.worker import TrainerWorker

    bootstrap_v0(loop_settings, database, tiny_base)
    w = TrainerWorker(loop_settings, database)
    thread = threading.Thread(target=w.run_forever, name="worker", daemon=True)
    thread.start()
    yield w
    w.stop()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the worker did not stop"

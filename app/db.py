"""Engine, session factory, the dialect check and the retrying write transaction.

SQLite (embedded default) and PostgreSQL (psycopg 3). Code that must behave differently
on the two backends asks :func:`dialect` (or :func:`is_sqlite` / :func:`is_postgres`)
here, for a URL, an engine or a session alike. :func:`transact` runs a unit of work as
one write transaction and retries it on serialization failures, deadlocks and a busy
SQLite database.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, MetaData, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

log = logging.getLogger(__name__)
T = TypeVar("T")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


#: PostgreSQL connections a process keeps open, and how many more it may open for a while.
#: The web server runs at most POOL_SIZE requests at once per worker process (app/main.py
#: caps AnyIO's thread pool to it), so under load the pool stays warm: with more request
#: threads than kept connections it opened and closed an overflow connection (a new
#: PostgreSQL backend) every few requests (docs/benchmarks.md, "Load"). Budget
#: ``(POOL_SIZE + MAX_OVERFLOW) x processes`` against PostgreSQL's max_connections.
#:
#: Sizing (README, "PostgreSQL"): the documented deployment runs ``rlhf serve --workers 2``
#: against PostgreSQL's default ``max_connections = 100``: 2 x (20 + 10) = 60 for the web
#: tier leaves 40 for trainer workers, samplers and psql. The web server admits at most
#: POOL_SIZE requests per process at once (app.main.ConnectionGate); the others wait in the
#: event loop, holding no connection, for up to REQUEST_WAIT_S before a 503. So a burst of
#: requests queues instead of exhausting the pool; the overflow is for what runs outside
#: the gate (the lifespan, background work).
POOL_SIZE = 20
MAX_OVERFLOW = 10
POOL_TIMEOUT_S = 10
REQUEST_WAIT_S = 30.0


def chunks(items: Sequence[T], size: int = 500) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size``, for ``IN (...)`` lists that stay within
    the backends' bind-parameter limits."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


Bind = str | Engine | Session
"""What the dialect helpers accept: a database URL, an engine, or a session bound to one."""


def dialect(bind: Bind) -> str:
    """The backend's name: ``"sqlite"`` or ``"postgresql"``."""
    if isinstance(bind, Session):
        return bind.get_bind().dialect.name
    if isinstance(bind, Engine):
        return bind.dialect.name
    return make_url(bind).get_backend_name()


def is_sqlite(bind: Bind) -> bool:
    return dialect(bind) == "sqlite"


def is_postgres(bind: Bind) -> bool:
    return dialect(bind) == "postgresql"


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout."""
    if is_sqlite(url):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW, pool_timeout=POOL_TIMEOUT_S
    )


class Database:
    """One engine and its session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return dialect(self.engine)

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.engine)

    @property
    def is_postgres(self) -> bool:
        return is_postgres(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self.sessionmaker() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()


# --- the retrying write transaction -------------------------------------------------

RETRYABLE_SQLSTATES = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock not available


def _retryable(exc: DBAPIError) -> bool:
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
        return True
    message = str(orig).lower()
    return "database is locked" in message or "database is busy" in message


_sqlite_locks: dict[str, threading.Lock] = {}
_sqlite_locks_guard = threading.Lock()


def _process_lock(db: Session) -> threading.Lock | None:
    """One in-process lock per SQLite database file.

    SQLite's busy handler polls with sleeps, so many threads of one server waiting on
    ``BEGIN IMMEDIATE`` crawl and each holds a pooled connection while it waits. Queuing
    them on a Python lock first hands the write lock over at once; the file lock still
    serialises other processes.
    """
    if not is_sqlite(db):
        return None
    url = str(db.get_bind().url)
    with _sqlite_locks_guard:
        return _sqlite_locks.setdefault(url, threading.Lock())


def transact(db: Session, fn: Callable[[], T], *, attempts: int = 8) -> T:
    """Run ``fn`` in a fresh write transaction and commit it.

    Whatever ``db`` had open is committed first (request setup only reads). On SQLite the
    transaction starts with ``BEGIN IMMEDIATE`` so that its reads and writes are one atomic
    step. A serialization failure, a deadlock or a busy database rolls back and runs
    ``fn`` again (at most ``attempts`` times, with jittered backoff); service errors
    propagate after a rollback.
    """
    db.commit()
    lock = _process_lock(db)
    for attempt in range(1, attempts + 1):
        try:
            with lock if lock is not None else nullcontext():
                if lock is not None:
                    db.execute(text("BEGIN IMMEDIATE"))
                try:
                    result = fn()
                    db.commit()
                except BaseException:
                    db.rollback()
                    raise
            return result
        except DBAPIError as exc:
            if attempt == attempts or not _retryable(exc):
                raise
            log.info("retrying labeling transaction after %s (attempt %d)", type(exc.orig).__name__, attempt)
            time.sleep(min(0.02 * 2**attempt, 1.0) * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")

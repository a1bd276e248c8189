"""Alembic environment: the URL comes from the caller or from RLHF_ settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

import app.models  # noqa: F401  (registers the tables)
from app.config import get_settings
from app.db import Base, is_sqlite, make_engine

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.attributes.get("url") or config.get_main_option("sqlalchemy.url") or (
        get_settings().resolved_database_url
    )


def _configure(connection: Connection | None, url: str) -> None:
    context.configure(
        connection=connection,
        url=None if connection is not None else url,
        target_metadata=target_metadata,
        render_as_batch=is_sqlite(url),
        compare_type=True,
        literal_binds=connection is None,
    )


def run_migrations_offline() -> None:
    url = _url()
    _configure(None, url)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection, str(connection.engine.url))
        with context.begin_transaction():
            context.run_migrations()
        return
    url = _url()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _configure(conn, url)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

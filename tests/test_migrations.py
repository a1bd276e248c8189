"""Migrations: upgrade/downgrade on both backends, and no drift from the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

import app.models  # noqa: F401
from app import migrate
from app.db import Base, is_sqlite, make_engine


def _diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn, opts={"compare_type": True, "render_as_batch": is_sqlite(url)}
            )
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_head_matches_models_and_downgrades_to_base(db_factory) -> None:
    url = db_factory.create(migrated=False)
    try:
        migrate.upgrade(url)
        assert set(Base.metadata.tables) <= _tables(url)
        assert _diff(url) == [], "models and migrations differ: write a migration"
        migrate.downgrade(url, "base")
        assert _tables(url) <= {"alembic_version"}
        migrate.upgrade(url)
        assert _diff(url) == []
    finally:
        db_factory.drop(url)

"""Shared helpers for CLI commands: settings, database, friendly errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db import Database
from app.services.errors import ServiceError

console = Console()
err_console = Console(stderr=True)


def print_table(title: str, rows: list[list[str]]) -> None:
    """Print ``[header, *body]`` rows as a rich table."""
    header, *body = rows
    table = Table(title=title)
    for name in header:
        table.add_column(name)
    for row in body:
        table.add_row(*row)
    console.print(table)


def settings() -> Settings:
    return get_settings()


def database() -> Database:
    return Database(settings().resolved_database_url)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A committed session; a service error exits 1 with its message."""
    db = database()
    try:
        with db.session() as session:
            yield session
    except ServiceError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc
    finally:
        db.dispose()


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

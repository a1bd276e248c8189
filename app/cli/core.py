"""`rlhf serve`, `rlhf run`, `rlhf db`, `rlhf users`, `rlhf tokens`."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

from app import migrate
from app.cli.context import console, err_console, session_scope, settings
from app.services import tokens, users
from app.services.errors import Invalid


def _read_password(confirm: bool = True) -> str:
    """From a prompt on a terminal, else the first line of stdin."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Repeat password: ") != first:
        err_console.print("[red]error:[/red] passwords do not match")
        raise typer.Exit(1)
    return first


def register(app: typer.Typer) -> None:
    db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
    users_app = typer.Typer(help="Manage users.", no_args_is_help=True)
    tokens_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
    app.add_typer(db_app, name="db")
    app.add_typer(users_app, name="users")
    app.add_typer(tokens_app, name="tokens")

    @db_app.command("upgrade")
    def db_upgrade(revision: str = "head") -> None:
        """Apply migrations up to REVISION (default: head)."""
        migrate.upgrade(settings().resolved_database_url, revision)
        console.print(f"database at {revision}")

    @db_app.command("downgrade")
    def db_downgrade(revision: str) -> None:
        """Revert migrations down to REVISION (e.g. base)."""
        migrate.downgrade(settings().resolved_database_url, revision)
        console.print(f"database at {revision}")

    @users_app.command("create")
    def users_create(
        name: str,
        role: Annotated[str, typer.Option(help="labeler or admin")] = "labeler",
    ) -> None:
        """Create a user; the password is read from a prompt, or from stdin when piped."""
        password = _read_password()
        with session_scope() as db:
            user = users.create_user(db, name, password, role)
            console.print(f"created {user.role} {user.username!r} (id {user.id})")

    @users_app.command("list")
    def users_list() -> None:
        with session_scope() as db:
            for u in users.list_users(db):
                state = "active" if u.is_active else "disabled"
                console.print(f"{u.id:>4}  {u.username:<24} {u.role:<8} {state}")

    @tokens_app.command("create")
    def tokens_create(
        name: Annotated[str, typer.Argument(help="the user the token acts as")],
        token_name: Annotated[str, typer.Option("--name", help="a label for the token")] = "cli",
    ) -> None:
        """Create an API token for user NAME and print it once."""
        with session_scope() as db:
            user = users.get_by_username(db, name)
            if user is None:
                raise Invalid(f"no user named {name!r}")
            _, plaintext = tokens.create_token(db, user, token_name)
        console.print("Token (shown once, store it now):", highlight=False)
        print(plaintext)

    @app.command()
    def serve(
        host: Annotated[str | None, typer.Option(help="bind address")] = None,
        port: Annotated[int | None, typer.Option(help="port")] = None,
        workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
    ) -> None:
        """Run the web server (pages and JSON API)."""
        import uvicorn

        s = settings()
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=host or s.host,
            port=port or s.port,
            workers=workers,
            log_level="info",
        )

    @app.command()
    def run(
        host: Annotated[str | None, typer.Option(help="bind address")] = None,
        port: Annotated[int | None, typer.Option(help="port")] = None,
        worker: Annotated[bool, typer.Option(help="also start the trainer worker")] = True,
    ) -> None:
        """Quick start: migrate, bootstrap, then run the web server and the worker together."""
        from app.cli.quickstart import quickstart

        quickstart(host=host, port=port, with_worker=worker)

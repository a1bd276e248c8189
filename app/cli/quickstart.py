"""`rlhf run`: the embedded one-command start."""

from __future__ import annotations

from app import migrate
from app.cli.context import console, session_scope, settings
from app.services import bootstrap


def quickstart(host: str | None, port: int | None, with_worker: bool) -> None:
    s = settings()
    s.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(s.resolved_database_url)
    with session_scope() as db:
        admin_name, password = bootstrap.ensure_admin(db)
    url = f"http://{host or s.host}:{port or s.port}/"
    console.rule("rlhf-studio")
    if password:
        console.print(f"Admin user created: [bold]{admin_name}[/bold]  password: [bold]{password}[/bold]")
        console.print("(shown once; change it in the dashboard or with `rlhf users`)")
    else:
        console.print(f"Admin user exists: {admin_name} (its password was printed at first start)")
    console.print(f"Open [bold]{url}[/bold]")
    import uvicorn

    uvicorn.run("app.main:create_app", factory=True, host=host or s.host, port=port or s.port)

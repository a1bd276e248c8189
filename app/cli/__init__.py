"""The ``rlhf`` command line: one entry point for the service, the worker and admin tasks."""

from __future__ import annotations

import typer

from app.cli import core, data, policy, simulate, train

app = typer.Typer(
    help="rlhf-studio: a self-hosted RLHF workbench (labeling, SFT, reward model, PPO).",
    no_args_is_help=True,
    add_completion=False,
)
for module in (core, data, policy, train, simulate):
    module.register(app)


def main() -> None:
    app()

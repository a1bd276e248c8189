"""Experiment tracking: a round reports to TensorBoard, MLflow and W&B through Accelerate.

The trackers are Accelerate's own (``accelerate.tracking``), started per round under
``<artifacts>/tracking/run<N>/``, offline by design:

* ``tensorboard``: event files in ``tracking/run<N>/tensorboard/run<N>/``;
* ``mlflow``: a local store in ``tracking/run<N>/mlflow``: ``mlflow.db`` (SQLite; MLflow 3
  refuses new file stores) and ``artifacts/``; experiment ``rlhf-studio``, run name
  ``run<N>``; open it with ``mlflow ui --backend-store-uri sqlite:///<that dir>/mlflow.db``;
* ``wandb``: offline mode, run directory ``tracking/run<N>/wandb`` (``wandb sync`` it
  later).

What a round reports: its config (every round key, with the defaults filled in) and the
run id, attempt, stages, base policy and snapshot sha256 as parameters; every metric
point the stages report (``sft/loss``, ``rm/accuracy``, ``ppo/reward``, ``eval/win_rate``,
... at their own step), through :class:`trainer.run_control.RunControl`, which already
sees each of them; at the end the registered policy version; and for MLflow and W&B the
evaluation's per-prompt table (``eval/samples.json``, a W&B table ``eval/samples``).

The libraries are optional (the ``tracking`` extra). A tracker that is not installed, or
that fails, is logged as a warning and dropped: tracking never fails a round.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EXPERIMENT = "rlhf-studio"


def tracking_dir(artifacts_dir: Path, run_id: int) -> Path:
    """Where the trackers of run ``run_id`` write: ``<artifacts>/tracking/run<N>``."""
    return Path(artifacts_dir) / "tracking" / f"run{run_id}"


def mlflow_uri(directory: Path) -> str:
    """The tracking URI of a round's local MLflow store (SQLite; MLflow 3 retired the file store)."""
    return f"sqlite:///{(Path(directory) / 'mlflow' / 'mlflow.db').resolve()}"


def _available(name: str) -> bool:
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    return {"tensorboard": is_tensorboard_available, "mlflow": is_mlflow_available,
            "wandb": is_wandb_available}[name]()


def _flat_params(values: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """Scalars only (TensorBoard's hparams refuse lists and None): lists as JSON, None as ''."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in values.items():
        if value is None:
            out[key] = ""
        elif isinstance(value, bool | int | float | str):
            out[key] = value
        else:
            out[key] = json.dumps(value)
    return out


class RoundTracker:
    """The trackers of one round; every method swallows (and logs) a tracker's errors."""

    def __init__(self, names: list[str], directory: Path, run_id: int,
                 warn: Callable[[str], None] | None = None) -> None:
        self.directory = Path(directory)
        self.run_id = run_id
        self.warn = warn or logger.warning
        self.trackers: list[Any] = []
        for name in names:
            if not _available(name):
                self.warn(f"tracking: {name} is not installed (pip install 'rlhf-studio[tracking]'); not reporting to it")
                continue
            try:
                tracker = self._make(name)
                tracker.start()
                self.trackers.append(tracker)
            except Exception as exc:  # noqa: BLE001 - tracking never fails a round
                self.warn(f"tracking: could not start {name}: {type(exc).__name__}: {exc}")

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.trackers]

    def _make(self, name: str) -> Any:
        from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

        run_name = f"run{self.run_id}"
        if name == "tensorboard":
            return TensorBoardTracker(run_name, self.directory / "tensorboard")
        if name == "mlflow":
            import mlflow

            store = self.directory / "mlflow"
            store.mkdir(parents=True, exist_ok=True)
            mlflow.set_tracking_uri(mlflow_uri(self.directory))
            return MLflowTracker(experiment_name=EXPERIMENT, run_name=run_name,
                                 logging_dir=(store / "artifacts").resolve().as_uri(),
                                 tags={"rlhf.run_id": str(self.run_id)})
        if name == "wandb":
            os.environ.setdefault("WANDB_MODE", "offline")
            (self.directory / "wandb").mkdir(parents=True, exist_ok=True)
            return WandBTracker(EXPERIMENT, name=run_name, dir=str(self.directory), mode=os.environ["WANDB_MODE"])
        raise ValueError(f"unknown tracker {name!r}")

    def _each(self, what: str, call: Callable[[Any], None], only: tuple[str, ...] | None = None) -> None:
        for tracker in list(self.trackers):
            if only is not None and tracker.name not in only:
                continue
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001
                self.warn(f"tracking: {tracker.name} could not {what}: {type(exc).__name__}: {exc}; dropped")
                self.trackers.remove(tracker)

    # -- what a round reports ---------------------------------------------------------

    def config(self, values: dict[str, Any]) -> None:
        """The round's parameters (config keys, run id, snapshot sha256, base policy, ...)."""
        params = _flat_params(values)
        self._each("store the config", lambda t: t.store_init_configuration(params))

    def metrics(self, values: dict[str, float], step: int) -> None:
        """Metric points of one step (keys ``<stage>/<name>``)."""
        self._each("log metrics", lambda t: t.log(values, step=step))

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        """A table as an artifact: ``<name>.json`` in MLflow, a W&B table ``<name>``."""
        if not rows:
            return
        columns = list(rows[0])

        def mlflow_table(tracker: Any) -> None:
            import mlflow

            mlflow.log_dict({"columns": columns, "data": [[r.get(c) for c in columns] for r in rows]},
                            f"{name}.json", run_id=tracker.active_run.info.run_id)

        def wandb_table(tracker: Any) -> None:
            tracker.log_table(name, columns=columns, data=[[r.get(c) for c in columns] for r in rows])

        self._each("log the table", mlflow_table, only=("mlflow",))
        self._each("log the table", wandb_table, only=("wandb",))

    def finish(self) -> None:
        self._each("finish", lambda t: t.finish())
        self.trackers = []


def evaluation_rows(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluation's per-sample lists (score delta, win, KL) as table rows."""
    deltas = evaluation.get("score_deltas") or []
    wins = evaluation.get("wins") or []
    kls = evaluation.get("kls") or []
    n = max(len(deltas), len(wins), len(kls))

    def at(values: list[Any], i: int) -> Any:
        return float(values[i]) if i < len(values) and values[i] is not None else None

    return [{"sample": i, "score_delta": at(deltas, i), "win": at(wins, i), "kl_from_prev": at(kls, i)}
            for i in range(n)]

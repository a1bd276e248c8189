"""Experiment tracking: a round reports to TensorBoard and MLflow for real (files read back)."""

from __future__ import annotations

import json

import pytest

from app.config import Settings
from tests.round_helpers import TINY_CONFIG, bootstrap_v0, create_run, fast_settings, labeled_set, logs_of, run_state
from trainer.config import ConfigError, validate_round_config
from trainer.worker import TrainerWorker

pytestmark = pytest.mark.usefixtures("single_torch_thread")

pytest.importorskip("tensorboard", reason="tensorboard is in the dev extra")
pytest.importorskip("mlflow", reason="mlflow(-skinny) is in the dev extra")


def _tensorboard_scalars(directory) -> dict[str, list[tuple[int, float]]]:  # type: ignore[no-untyped-def]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in directory.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_report_to_is_a_list_of_choices() -> None:
    assert validate_round_config({"report_to": ["mlflow", "tensorboard", "mlflow"]}) == {
        "report_to": ["mlflow", "tensorboard"]}
    assert validate_round_config({"report_to": []}) == {"report_to": []}
    assert validate_round_config({"report_to": None}) == {"report_to": None}
    with pytest.raises(ConfigError, match="list of strings"):
        validate_round_config({"report_to": "mlflow"})
    with pytest.raises(ConfigError, match="'comet' not among"):
        validate_round_config({"report_to": ["comet"]})


def test_worker_default_report_to() -> None:
    assert Settings(report_to=" TensorBoard, mlflow ,").trackers == ["tensorboard", "mlflow"]
    assert Settings().trackers == []
    with pytest.raises(ValueError, match="unknown tracker"):
        Settings(report_to="tensorboard,neptune").trackers  # noqa: B018


def test_a_round_reports_to_tensorboard_and_mlflow(settings, database, tiny_base) -> None:
    # the worker default (the round's config overrides it); a generous heartbeat timeout: MLflow's first
    # start (its SQLite schema) can hold the GIL for seconds on a loaded machine
    s = fast_settings(settings, report_to="tensorboard", heartbeat_timeout_s=60.0)
    v0 = bootstrap_v0(s, database, tiny_base)
    set_id = labeled_set(database, v0.id)
    run_id = create_run(database, [set_id], config={**TINY_CONFIG, "report_to": ["tensorboard", "mlflow"]})
    TrainerWorker(s, database, sampler=False).run_once()
    run = run_state(database, run_id)
    assert run.status == "succeeded", (run.error, logs_of(database, run_id))
    version = run.metrics["policy_version"]
    root = s.resolved_artifacts_dir / "tracking" / f"run{run_id}"
    assert f"tracking: reporting to tensorboard, mlflow under {root}" in logs_of(database, run_id)

    # TensorBoard: the event files hold the stage metrics at their steps.
    scalars = _tensorboard_scalars(root / "tensorboard")
    for tag in ("sft/loss", "rm/accuracy", "ppo/reward", "ppo/kl", "eval/win_rate", "round/policy_version"):
        assert scalars.get(tag), f"no {tag} in {sorted(scalars)}"
    assert [v for _, v in scalars["round/policy_version"]] == [float(version)]
    assert len(scalars["ppo/reward"]) == TINY_CONFIG["ppo_iterations"]
    assert list((root / "tensorboard").rglob("hparams.yml"))

    # MLflow: the local file store, read back with MLflow's own client.
    import mlflow

    from trainer.tracking import mlflow_uri

    client = mlflow.MlflowClient(tracking_uri=mlflow_uri(root))
    experiment = client.get_experiment_by_name("rlhf-studio")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == f"run{run_id}" and found.info.status == "FINISHED"
    params = found.data.params
    assert params["snapshot_sha256"] == run.snapshot["sha256"] and params["run_id"] == str(run_id)
    assert params["ppo_iterations"] == "2" and params["stages"] == "sft,rm,ppo"
    assert found.data.metrics["round/policy_version"] == version
    history = client.get_metric_history(found.info.run_id, "ppo/reward")
    assert len(history) == TINY_CONFIG["ppo_iterations"]
    assert [m.step for m in history] == [step for step, _ in sorted(scalars["ppo/reward"])]
    table = json.loads((root / "mlflow" / "artifacts").joinpath(
        found.info.run_id, "artifacts", "eval", "samples.json").read_text())
    assert table["columns"] == ["sample", "score_delta", "win", "kl_from_prev"]
    assert len(table["data"]) == run.metrics["eval"]["eval_samples"]


def test_a_missing_tracker_is_a_warning_not_a_failure(settings, database, tiny_base, monkeypatch) -> None:
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    s = fast_settings(settings)
    v0 = bootstrap_v0(s, database, tiny_base)
    set_id = labeled_set(database, v0.id, rankings=0, demonstrations=3)
    run_id = create_run(database, [set_id], stages=["sft"], config={**TINY_CONFIG, "report_to": ["wandb"]})
    TrainerWorker(s, database, sampler=False).run_once()
    run = run_state(database, run_id)
    assert run.status == "succeeded", run.error
    assert "tracking: wandb is not installed" in logs_of(database, run_id)

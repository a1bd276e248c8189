"""The stages' one metrics path: weighted means, ratios, a window per log."""

from __future__ import annotations

import pytest
import torch

from trainer.stages.metrics import RunningMeans, StageMetrics


def test_running_means_weights_and_ratios() -> None:
    means = RunningMeans()
    means.add("loss", torch.tensor(2.0), 3)
    means.add("loss", 4.0, 1)
    means.add_ratio("accuracy", torch.tensor(1.5), torch.tensor(2.0))
    means.add_ratio("accuracy", 1.0, 2.0)
    assert means.means() == pytest.approx({"loss": 2.5, "accuracy": 0.625})
    means.clear()
    assert means.means() == {}


def test_log_sends_the_window_and_extras_then_starts_again() -> None:
    calls: list[tuple[str, int, dict[str, float]]] = []
    log = StageMetrics("sft", lambda stage, step, m: calls.append((stage, step, m)))
    log.add("loss", 1.0)
    log.add("loss", 3.0)
    assert log.log(1, lr=0.1, grad_norm=None) == {"loss": 2.0, "lr": 0.1}
    log.add("loss", 5.0)
    log.log(2)
    log.emit(2, {"val_loss": 0.5})
    assert calls == [("sft", 1, {"loss": 2.0, "lr": 0.1}), ("sft", 2, {"loss": 5.0}), ("sft", 2, {"val_loss": 0.5})]

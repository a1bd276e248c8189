"""DPO on K-way rankings with the tiny model: the loss, K forwards per ranking, learning."""

from __future__ import annotations

import copy

import torch

from tests.stages.test_reward import marker_rankings
from trainer.config import DPOConfig
from trainer.stages.dpo import dpo_loss, train_dpo


def test_dpo_loss_is_trl_sigmoid_loss_over_a_rankings_pairs() -> None:
    policy = torch.tensor([-1.0, -2.0, -3.0])
    ref = torch.tensor([-1.5, -1.5, -1.5])
    groups = [(torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2]))]  # 0 > 1 > 2
    loss, correct, pairs, _ = dpo_loss(policy, ref, groups, beta=0.1)
    margins = 0.1 * torch.tensor([(-1.0 + 1.5) - (-2.0 + 1.5), (-1.0 + 1.5) - (-3.0 + 1.5), (-2.0 + 1.5) - (-3.0 + 1.5)])
    assert torch.allclose(loss, -torch.nn.functional.logsigmoid(margins).mean())
    assert float(correct) == 3 and float(pairs) == 3
    smoothed, *_ = dpo_loss(policy, ref, groups, beta=0.1, label_smoothing=0.2)
    assert smoothed > loss  # conservative DPO charges for the assumed flips


def test_dpo_learns_the_marker_preference_and_encodes_each_completion_once(policy, tokenizer, accelerator, step_log):
    torch.manual_seed(0)
    ref = copy.deepcopy(policy)
    rows: list[int] = []
    policy.model.register_forward_hook(
        lambda mod, args, kwargs, out: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    train, val = marker_rankings(24, seed=1), marker_rankings(8, seed=2)
    config = DPOConfig(lr=1e-3, beta=0.5, epochs=3, min_steps=0, rankings_per_batch=4, max_length=64, warmup_ratio=0.0)
    metrics = train_dpo(policy, ref, tokenizer, train, val, config, accelerator=accelerator, on_step=step_log)
    assert metrics["val_accuracy"] > metrics["val_accuracy_before"] and metrics["val_accuracy"] >= 0.8, metrics
    assert metrics["steps"] == 3 * 24 / 4
    k = len(train[0].completions)
    assert rows[-1] == 4 * k  # a batch of 4 rankings is 4 x K sequences, not one per pair
    assert step_log.series("loss") and step_log.series("val_accuracy")[-1] == metrics["val_accuracy"]

"""Evaluation: a policy against itself is a coin flip with zero KL; a changed policy
shows a positive KL and a win rate in [0, 1] consistent with its mean scores."""

from __future__ import annotations

import copy

import pytest
import torch

from trainer.stages.evaluate import EvalParams, evaluate_policies

PROMPTS = [f"Tell me about item {i}." for i in range(12)] + [[{"role": "user", "content": "Hello"}]]


def length_score(prompts: list[str], responses: list[str]) -> torch.Tensor:
    return torch.tensor([float(len(r)) for r in responses])


def test_policy_against_itself_is_a_tie(policy, tokenizer):
    params = EvalParams(max_new_tokens=8, temperature=0.7, batch_size=5)
    for other in (policy, copy.deepcopy(policy)):
        result = evaluate_policies(policy, other, length_score, tokenizer, PROMPTS, params)
        assert result["win_rate"] == 0.5
        assert result["kl_from_prev"] == pytest.approx(0.0, abs=1e-5)
        assert result["mean_score_new"] == result["mean_score_prev"]
        assert result["n"] == len(PROMPTS)


def test_changed_policy_has_positive_kl(policy, tokenizer):
    prev = copy.deepcopy(policy)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    result = evaluate_policies(
        policy, prev, length_score, tokenizer, PROMPTS * 2, EvalParams(max_new_tokens=8, temperature=1.0)
    )
    assert 0.0 <= result["win_rate"] <= 1.0
    assert result["kl_from_prev"] > 0.0


def test_evaluate_with_a_reward_model_scorer(policy, tokenizer):
    from trainer.stages.reward import RewardModel, reward_fn_from_model

    rm = RewardModel.from_causal_lm(policy)
    prev = copy.deepcopy(policy)
    with torch.no_grad():
        policy.lm_head.weight.mul_(1.5)  # sharper (tied) output distribution
    result = evaluate_policies(
        policy, prev, reward_fn_from_model(rm, tokenizer), tokenizer, PROMPTS, EvalParams(max_new_tokens=6)
    )
    assert set(result) == {
        "win_rate", "mean_score_new", "mean_score_prev", "kl_from_prev", "n", "samples", "score_deltas", "wins", "kls",
        "context_cut_examples", "context_cut_messages",
    }
    assert result["context_cut_examples"] == 0 == result["context_cut_messages"]
    assert len(result["wins"]) == len(PROMPTS) * EvalParams().samples_per_prompt
    assert all(torch.isfinite(torch.tensor(v)).all() for v in result.values())
    assert 0.0 <= result["win_rate"] <= 1.0

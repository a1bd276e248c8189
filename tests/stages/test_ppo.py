"""PPO: GAE, EOS masks, temperature-scaled log-probs, learning a synthetic reward,
logging, the KL controller, PPO-ptx and cancellation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from trainer.stages.common import (
    Cancelled,
    prompt_text,
    response_logprobs,
    response_mask_from_eos,
    sample_responses,
)
from trainer.stages.ppo import AdaptiveKLController, PPOConfig, compute_gae, train_ppo
from trainer.stages.reward import RewardModel
from trainer.stages.sft import SFTExample

PROMPTS = [f"Write about topic {i}." for i in range(16)]


def count_e(prompts: list[str], responses: list[str]) -> torch.Tensor:
    """Synthetic reward: 0.2 per letter 'e' in the response."""
    return torch.tensor([r.count("e") / 5.0 for r in responses])


def small_config(**kw) -> PPOConfig:
    base = dict(
        lr=1e-2,
        iterations=2,
        rollout_batch_size=8,
        minibatch_size=4,
        ppo_epochs=1,
        max_new_tokens=6,
        temperature=1.0,
        missing_eos_penalty=None,
    )
    base.update(kw)
    return PPOConfig(**base)


def test_gae_matches_hand_computation():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.2, 0.1, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the 4th position is past the end
    gamma, lam = 1.0, 0.95
    d2 = 1.0 + 0.0 - 0.1  # the state after the last token is terminal (value 0)
    d1 = 0.0 + 0.1 - 0.2
    d0 = 0.0 + 0.2 - 0.5
    a2, a1 = d2, d1 + lam * d2
    a0 = d0 + lam * a1
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2, 0.0]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[a0 + 0.5, a1 + 0.2, a2 + 0.1, 0.0]]), atol=1e-6)


def test_response_mask_stops_at_first_eos_even_when_pad_is_eos():
    eos = 2
    responses = torch.tensor([[5, 6, eos, eos, eos], [5, 6, 7, 8, 9], [eos, 0, 0, 0, 0]])
    mask, has_eos = response_mask_from_eos(responses, eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert has_eos.tolist() == [True, False, True]


def test_logprobs_use_temperature_and_ignore_left_padding(policy, tokenizer):
    texts = [prompt_text(tokenizer, "Hi"), prompt_text(tokenizer, "A much longer prompt about the sea and sky")]
    temperature = 0.7
    samples = sample_responses(policy, tokenizer, texts, max_new_tokens=5, temperature=temperature, generator_seed=0)
    batched = response_logprobs(policy, samples, temperature)
    for row in range(2):
        real = samples.attention_mask[row].bool()
        ids = samples.input_ids[row][real].unsqueeze(0)  # no padding at all
        n_resp = int(samples.response_mask[row].sum())
        with torch.no_grad():
            logits = policy(input_ids=ids).logits[0, -n_resp - 1 : -1] / temperature
        expected = F.log_softmax(logits, -1).gather(-1, ids[0, -n_resp:].unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(batched[row, :n_resp], expected, atol=1e-4)
        assert (batched[row, n_resp:] == 0).all()


def test_ppo_raises_synthetic_reward_and_logs(policy, tokenizer, accelerator, step_log):
    torch.manual_seed(0)
    ref = copy.deepcopy(policy)
    value = RewardModel.from_causal_lm(policy)
    value_before = value.score_head.weight.detach().clone()
    rendered = [prompt_text(tokenizer, p) for p in PROMPTS] * 4

    def sampled_reward() -> float:
        s = sample_responses(policy, tokenizer, rendered, max_new_tokens=8, temperature=1.0, generator_seed=5)
        return float(count_e([], s.response_texts).mean())

    before = sampled_reward()
    config = small_config(iterations=8, rollout_batch_size=16, minibatch_size=8, ppo_epochs=4, max_new_tokens=8)
    metrics = train_ppo(
        policy, ref, value, count_e, tokenizer, PROMPTS, config, accelerator=accelerator, on_step=step_log
    )
    after = sampled_reward()

    assert after > before + 0.2, (before, after)
    scores = step_log.series("score")
    assert len(scores) == 8 and [s for s, _, _ in step_log.calls] == ["ppo"] * 8
    assert [i for _, i, _ in step_log.calls] == list(range(1, 9))
    assert sum(scores[-2:]) > sum(scores[:2])
    for key in ("kl", "entropy", "clipfrac", "value_loss", "approx_kl", "response_length", "policy_loss"):
        series = step_log.series(key)
        assert len(series) == 8 and all(math.isfinite(v) for v in series), key
    kl = step_log.series("kl")
    assert kl[0] == pytest.approx(0.0, abs=1e-3)  # first rollout: policy == reference
    assert kl[-1] > 0.0
    assert metrics["score"] == scores[-1] and metrics["score_first"] == scores[0]
    assert metrics["episodes"] == 8 * 16
    # The reference policy stays frozen; the value model trained.
    assert all(not p.requires_grad for p in ref.parameters())
    assert not torch.equal(value.score_head.weight, value_before)


def test_missing_eos_penalty_is_added_to_the_score(policy, tokenizer, accelerator, step_log):
    ref = copy.deepcopy(policy)
    value = RewardModel.from_causal_lm(policy)
    zero = lambda p, r: torch.zeros(len(r))  # noqa: E731
    train_ppo(
        policy,
        ref,
        value,
        zero,
        tokenizer,
        PROMPTS,
        small_config(iterations=1, missing_eos_penalty=-1.0),
        accelerator=accelerator,
        on_step=step_log,
    )
    ((_, _, m),) = step_log.calls
    assert m["score"] == 0.0
    assert m["reward"] == pytest.approx(-(1.0 - m["eos_fraction"]), abs=1e-6)
    with pytest.raises(ValueError):
        PPOConfig(missing_eos_penalty=1.0)


def test_ptx_term_and_adaptive_kl(policy, tokenizer, accelerator, step_log):
    ref = copy.deepcopy(policy)
    value = RewardModel.from_causal_lm(policy)
    demos = [SFTExample(p, None, "a short demonstration") for p in PROMPTS[:4]]
    config = small_config(iterations=2, ptx_coef=0.5, ptx_batch_size=2, adaptive_kl=True, target_kl=0.001, horizon=100)
    metrics = train_ppo(
        policy,
        ref,
        value,
        count_e,
        tokenizer,
        PROMPTS,
        config,
        ptx_examples=demos,
        accelerator=accelerator,
        on_step=step_log,
    )
    ptx = step_log.series("ptx_loss")
    assert len(ptx) == 2 and all(v > 0 for v in ptx)
    # Iteration 1 has KL 0 (policy == reference), far below target: beta shrinks by the
    # clipped 20 % x n/horizon; iteration 2's KL then moves it by the same rule.
    kl1, kl2 = step_log.series("kl")
    coef1, coef2 = step_log.series("kl_coef")
    assert kl1 == pytest.approx(0.0, abs=1e-3) and coef1 == config.kl_coef
    assert coef2 == pytest.approx(config.kl_coef * (1 - 0.2 * 8 / 100))
    err2 = max(-0.2, min(0.2, kl2 / config.target_kl - 1))
    assert metrics["final_kl_coef"] == pytest.approx(coef2 * (1 + err2 * 8 / 100))
    with pytest.raises(ValueError):
        train_ppo(policy, ref, value, count_e, tokenizer, PROMPTS, small_config(ptx_coef=1.0), accelerator=accelerator)


def test_adaptive_kl_controller_direction():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=12.0, n_steps=1000)
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(current_kl=0.0, n_steps=1000)
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98)


def test_ppo_cancel(policy, tokenizer, accelerator):
    ref = copy.deepcopy(policy)
    value = RewardModel.from_causal_lm(policy)
    with pytest.raises(Cancelled):
        train_ppo(
            policy,
            ref,
            value,
            count_e,
            tokenizer,
            PROMPTS,
            small_config(),
            accelerator=accelerator,
            should_stop=lambda: True,
        )

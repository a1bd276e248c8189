"""Stage 4: compare the new policy with the previous one on validation prompts.

Both policies sample one response per prompt with the same random seed (common random
numbers: identical policies draw identical samples, so a policy compared with itself
scores exactly 0.5 and KL 0, and real differences are measured with less noise). The
RM scores both; the new policy wins a prompt when its score is higher, a tie counts
half. ``kl_from_prev`` is a Monte-Carlo estimate of KL(new || prev) per response: the
mean over the new policy's samples of ``sum_t log p_new(y_t) - log p_prev(y_t)``, with
both log-probabilities taken from logits divided by the sampling temperature (the
distributions that were actually sampled).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from app.models.prompts import DEFAULT_SAMPLING
from trainer.config import EvalConfig, with_sampling

from trainer.prompting import PromptLike, fit_prompt, prompt_token_limit

from .accel import model_device
from .sampling import response_logprobs, sample_responses

logger = logging.getLogger(__name__)


EvalParams = EvalConfig  # the evaluation's settings (trainer/config.py)


@torch.no_grad()
def evaluate_policies(
    new_policy: nn.Module,
    prev_policy: nn.Module,
    rm_score_fn: Callable[[list[str], list[str]], torch.Tensor],
    tokenizer,
    prompts: Sequence[PromptLike],
    params: EvalConfig | None = None,
) -> dict[str, Any]:
    """Win rate of ``new_policy`` over ``prev_policy`` under the RM, mean scores and KL.

    Each prompt is sampled ``samples_per_prompt`` times by each policy, pair ``j`` of a
    prompt with the same seed. ``rm_score_fn(prompt_texts, response_texts)`` is PPO's
    reward_fn shape (``trainer.stages.reward.reward_fn_from_model``). Returns
    ``win_rate``, ``mean_score_new``, ``mean_score_prev``, ``kl_from_prev``, ``n``
    (prompts), ``samples`` (pairs) and the per-pair lists the gates read:
    ``score_deltas`` (new - prev), ``wins`` (1, 0.5, 0) and ``kls``, and
    ``context_cut_examples`` / ``context_cut_messages`` (prompts whose conversation was cut
    from its oldest turns to fit, and the messages dropped in all).
    """
    params = with_sampling(params or EvalConfig(), DEFAULT_SAMPLING)
    if not prompts:
        raise ValueError("evaluation needs at least one prompt")
    # Conversations too long for the sample's prompt budget lose their oldest exchanges
    # (system kept), as in PPO's rollouts (trainer.prompting.fit_prompt).
    limit = prompt_token_limit(getattr(new_policy, "config", None), params.max_new_tokens, params.max_prompt_length)
    fitted = [fit_prompt(tokenizer, p, limit) for p in prompts]
    cut = [f.dropped for f in fitted if f.dropped]
    rendered = [f.text for f in fitted]
    rows = [text for text in rendered for _ in range(params.samples_per_prompt)]
    new_scores, prev_scores, kls = [], [], []
    for i in range(0, len(rows), params.batch_size):
        chunk = rows[i : i + params.batch_size]
        seed = params.seed + i
        kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            max_prompt_length=params.max_prompt_length,
            generator_seed=seed,
        )
        new_s = sample_responses(new_policy, tokenizer, chunk, **kwargs)
        prev_s = sample_responses(prev_policy, tokenizer, chunk, **kwargs)
        new_scores.append(torch.as_tensor(rm_score_fn(new_s.prompt_texts, new_s.response_texts)).float().cpu())
        prev_scores.append(torch.as_tensor(rm_score_fn(prev_s.prompt_texts, prev_s.response_texts)).float().cpu())

        lp_new = response_logprobs(new_policy.eval(), new_s, params.temperature)
        on_prev = _moved(new_s, model_device(prev_policy))
        lp_prev = response_logprobs(prev_policy.eval(), on_prev, params.temperature).to(lp_new.device)
        kls.append((lp_new - lp_prev).sum(1).float().cpu())

    s_new, s_prev, kl = torch.cat(new_scores), torch.cat(prev_scores), torch.cat(kls)
    wins = (s_new > s_prev).float() + 0.5 * (s_new == s_prev).float()
    result: dict[str, Any] = {
        "win_rate": float(wins.mean()),
        "mean_score_new": float(s_new.mean()),
        "mean_score_prev": float(s_prev.mean()),
        "kl_from_prev": float(kl.mean()),
        "n": float(len(rendered)),
        "samples": float(len(rows)),
        "score_deltas": (s_new - s_prev).tolist(),
        "wins": wins.tolist(),
        "kls": kl.tolist(),
        "context_cut_examples": float(len(cut)),
        "context_cut_messages": float(sum(cut)),
    }
    logger.info("evaluation: %s", {k: v for k, v in result.items() if not isinstance(v, list)})
    return result


def _moved(samples, device: torch.device):
    """The same samples with their tensors on ``device`` (the previous policy's)."""
    from dataclasses import replace

    return replace(
        samples,
        input_ids=samples.input_ids.to(device),
        attention_mask=samples.attention_mask.to(device),
        response_mask=samples.response_mask.to(device),
        has_eos=samples.has_eos.to(device),
    )

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
from dataclasses import dataclass

import torch
from torch import nn

from .common import PromptLike, model_device, prompt_text, response_logprobs, sample_responses

logger = logging.getLogger(__name__)


@dataclass
class EvalParams:
    """Sampling settings of the evaluation (use the PPO stage's temperature)."""

    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int = 16
    max_prompt_length: int = 512
    seed: int = 1234


@torch.no_grad()
def evaluate_policies(
    new_policy: nn.Module,
    prev_policy: nn.Module,
    rm_score_fn: Callable[[list[str], list[str]], torch.Tensor],
    tokenizer,
    prompts: Sequence[PromptLike],
    params: EvalParams | None = None,
) -> dict[str, float]:
    """Win rate of ``new_policy`` over ``prev_policy`` under the RM, mean scores and KL.

    ``rm_score_fn(prompt_texts, response_texts)`` is the same shape as PPO's reward_fn
    (``trainer.stages.reward.reward_fn_from_model``). Returns ``win_rate``,
    ``mean_score_new``, ``mean_score_prev``, ``kl_from_prev`` and ``n`` (prompts).
    """
    params = params or EvalParams()
    if not prompts:
        raise ValueError("evaluation needs at least one prompt")
    rendered = [prompt_text(tokenizer, p) for p in prompts]
    new_scores, prev_scores, kls = [], [], []
    for i in range(0, len(rendered), params.batch_size):
        chunk = rendered[i : i + params.batch_size]
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
    result = {
        "win_rate": float(wins.mean()),
        "mean_score_new": float(s_new.mean()),
        "mean_score_prev": float(s_prev.mean()),
        "kl_from_prev": float(kl.mean()),
        "n": float(len(rendered)),
    }
    logger.info("evaluation: %s", result)
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

"""Sampling inside the stages (PPO rollouts, the evaluation) and the log-probabilities
of sampled responses.

Prompts are encoded, truncated and stopped exactly as the labeling sampler does
(trainer/prompting.py); the batch layout is :class:`Samples`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainer.prompting import encode_prompt, eos_token_ids, pad_token_id, prompt_token_limit

from .accel import forward_kwargs_supported, model_device
from .tensors import pad_left, position_ids_from_mask, response_mask_from_eos, token_logprobs


@dataclass
class Samples:
    """A batch of sampled responses in one tensor layout.

    ``input_ids`` is ``[B, P + R]``: left-padded prompts in the first ``P`` columns, the
    response in the remaining ``R``. ``attention_mask`` covers real prompt tokens and the
    response up to and including its first EOS; ``response_mask`` is ``[B, R]``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_len: int
    response_mask: torch.Tensor
    has_eos: torch.Tensor
    prompt_texts: list[str]
    response_texts: list[str]

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]


@torch.no_grad()
def sample_responses(
    model: nn.Module,
    tokenizer,
    prompt_texts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    max_prompt_length: int | None = 512,
    generator_seed: int | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> Samples:
    """Sample one response per prompt with ``model.generate`` (left padding, EOS stops).

    ``generator_seed`` reseeds torch's RNG right before sampling (common random numbers:
    two identical models given the same seed draw identical samples).
    """
    from transformers import GenerationConfig

    device = model_device(model)
    pad_id = pad_token_id(tokenizer)
    eos_ids = eos_token_ids(tokenizer, model)
    limit = prompt_token_limit(getattr(model, "config", None), max_new_tokens, max_prompt_length)
    prompts = [encode_prompt(tokenizer, t, limit) for t in prompt_texts]
    ids, mask = pad_left(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    gen_config = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        repetition_penalty=1.0,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        use_cache=True,
    )
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    was_training = model.training
    model.eval()
    try:
        with autocast() if autocast is not None else contextlib.nullcontext():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_config)
    finally:
        model.train(was_training)
    prompt_len = ids.shape[1]
    responses = out[:, prompt_len:]
    if responses.shape[1] == 0:  # every prompt hit max length at once; keep a 1-token layout
        responses = torch.full((ids.shape[0], 1), eos_ids[0], dtype=torch.long, device=device)
    resp_mask, has_eos = response_mask_from_eos(responses, eos_ids)
    responses = torch.where(resp_mask.bool(), responses, torch.full_like(responses, pad_id))
    texts = [tokenizer.decode(r[m.bool()].tolist(), skip_special_tokens=True) for r, m in zip(responses, resp_mask)]
    return Samples(
        input_ids=torch.cat([ids, responses], dim=1),
        attention_mask=torch.cat([mask, resp_mask], dim=1),
        prompt_len=prompt_len,
        response_mask=resp_mask,
        has_eos=has_eos,
        prompt_texts=list(prompt_texts),
        response_texts=texts,
    )


def response_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int
) -> torch.Tensor:
    """Logits that predict each response token: positions ``P-1 .. P+R-2``, ``[B, R, V]``.

    Uses ``logits_to_keep`` where the model supports it, so no LM-head work is spent on
    the prompt.
    """
    n_resp = input_ids.shape[1] - prompt_len
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask),
        "use_cache": False,
    }
    inner = model.module if hasattr(model, "module") else model
    if "logits_to_keep" in forward_kwargs_supported(inner):
        kwargs["logits_to_keep"] = n_resp + 1
    logits = model(**kwargs).logits
    return logits[:, -(n_resp + 1) : -1]


def response_logprobs(
    model: nn.Module, samples: Samples, temperature: float, batch_size: int | None = None
) -> torch.Tensor:
    """log pi(response token) under ``logits / temperature``, ``[B, R]`` (0 beyond the end)."""
    rows = samples.input_ids.shape[0]
    step = batch_size or rows
    out = []
    for i in range(0, rows, step):
        logits = response_logits(
            model, samples.input_ids[i : i + step], samples.attention_mask[i : i + step], samples.prompt_len
        )
        lp = token_logprobs(logits / temperature, samples.response_ids[i : i + step])
        out.append(lp * samples.response_mask[i : i + step])
    return torch.cat(out, dim=0)

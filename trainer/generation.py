"""Batched sampling of K completions per prompt from a policy: the transformers backend
and :func:`make_generator`, which picks a backend (vLLM in trainer/vllm_backend.py).

One generator is built per policy (weights load once) and turns a list of
:class:`GenRequest` into K :class:`GenResult` per request. Requests with equal
:class:`SamplingParams` share batches: the rows of a batch are the K samples of each of
several prompts, left-padded, and a batch is one ``model.generate`` call. A completion
whose stripped text equals another completion of the same prompt is drawn again (a few
bounded rounds) so labelers are not asked to rank duplicates.

What ``GenResult.seed`` means, per backend:

* transformers: the seed of the *batch* the completion was sampled in (the global torch
  RNG is seeded with it inside :func:`torch.random.fork_rng` for one ``generate`` call).
  ``batch_row`` is the completion's row in that batch. Re-running the same batch (same
  prompts, same order, same sampling params and batch size) on the same hardware with that
  seed reproduces it; a single row cannot be reproduced on its own, because all rows of a
  batch draw from one RNG stream.
* vLLM: the per-request seed of vLLM's ``SamplingParams(seed=...)``; ``batch_row`` is the
  sample's index among the ``n`` samples of that request.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from app.db import chunks
from trainer.generation_base import (  # noqa: F401 - the shared names are re-exported here
    SEED_BITS,
    BaseGenerator,
    Draw,
    DrawJob,
    FinishReason,
    GenRequest,
    GenResult,
    SamplingParams,
    duplicate_slots,
    encode_request,
    request_prompt_text,
)
from trainer.prompting import eos_token_ids, prompt_token_limit

logger = logging.getLogger(__name__)


class TransformersGenerator(BaseGenerator):
    """Sampler on Hugging Face ``generate``: one call per batch of up to
    ``max_batch_size`` sequences (the K samples of several prompts, left-padded)."""

    backend = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch_size: int = 32,
        max_redraw_rounds: int = 3,
        seed: int | None = None,
    ) -> None:
        super().__init__(max_redraw_rounds=max_redraw_rounds, seed=seed)
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        from trainer.policy_io import ensure_pad_token

        self.model = model
        self._tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.pad_id = ensure_pad_token(tokenizer, model)
        self.eos_ids = self._eos_ids(model, tokenizer)
        tokenizer.padding_side = "left"

    @classmethod
    def from_dir(
        cls, path: str | os.PathLike[str], device: torch.device | str | None = None, **kwargs: Any
    ) -> TransformersGenerator:
        """Load the policy at ``path`` once and wrap it."""
        from trainer.policy_io import load_policy

        model, tokenizer = load_policy(Path(path), device=device)
        return cls(model, tokenizer, **kwargs)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @staticmethod
    def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
        return eos_token_ids(tokenizer, model)

    def _max_prompt_tokens(self, params: SamplingParams) -> int | None:
        return prompt_token_limit(self.model.config, params.max_new_tokens)

    def _draw(self, jobs: Sequence[DrawJob], params: SamplingParams) -> list[list[Draw]]:
        # Rows of similar prompt length share batches (less padding); a job's rows stay adjacent.
        order = sorted(range(len(jobs)), key=lambda j: len(jobs[j].prompt_ids))
        rows = [(j, jobs[j].prompt_ids) for j in order for _ in range(jobs[j].n)]
        out: list[list[Draw]] = [[] for _ in jobs]
        for batch in chunks(rows, self.max_batch_size):
            draws = self._generate_batch([ids for _, ids in batch], params)
            for (job_index, _), draw in zip(batch, draws):
                out[job_index].append(draw)
        return out

    def _left_pad(self, prompts: Sequence[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        return input_ids.to(self.model.device), attention.to(self.model.device)

    @staticmethod
    def _sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
        """Explicit values for everything that shapes the distribution, so a checkpoint's
        generation_config (top_k=50 default, repetition_penalty, ...) cannot alter it."""
        if params.greedy:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None, "repetition_penalty": 1.0}
        return {
            "do_sample": True,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": 0,
            "repetition_penalty": 1.0,
        }

    def _generate_batch(self, prompts: Sequence[tuple[int, ...]], params: SamplingParams) -> list[Draw]:
        input_ids, attention = self._left_pad(prompts)
        seed = self.next_seed()
        devices = [self.model.device] if self.model.device.type == "cuda" else []
        started = time.perf_counter()
        with torch.inference_mode(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=params.max_new_tokens,
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
                **self._sampling_kwargs(params),
            )
        elapsed = time.perf_counter() - started
        generated = output[:, input_ids.shape[1] :].tolist()
        share = elapsed / len(prompts)
        return [self._to_draw(tokens, seed, share, row) for row, tokens in enumerate(generated)]

    def _to_draw(self, tokens: list[int], seed: int, gen_time_s: float, row: int) -> Draw:
        """Cut a generated row at its first EOS (everything after it is padding)."""
        eos = set(self.eos_ids)
        end = next((i for i, t in enumerate(tokens) if t in eos), None)
        kept = tokens if end is None else tokens[:end]
        return Draw(
            text=self.tokenizer.decode(kept, skip_special_tokens=True),
            token_count=len(kept),
            finish_reason="length" if end is None else "eos",
            seed=seed,
            gen_time_s=gen_time_s,
            batch_row=row,
        )


def make_generator(
    policy_dir: str | os.PathLike[str],
    device: torch.device | str | None = None,
    prefer_vllm: bool = True,
    **kwargs: Any,
) -> BaseGenerator:
    """A generator for the policy at ``policy_dir``: vLLM when it imports and CUDA is
    available (and ``prefer_vllm``), else transformers. ``kwargs`` go to the constructor
    (``seed``, ``max_redraw_rounds``; ``max_batch_size`` for transformers only)."""
    from trainer.device import pick_device
    from trainer.policy_io import validate_policy_dir

    validate_policy_dir(policy_dir)
    device = torch.device(device) if device is not None else pick_device()
    if prefer_vllm and device.type == "cuda":
        from trainer.vllm_backend import VLLMGenerator, vllm_available

        if vllm_available():
            vllm_kwargs = {k: v for k, v in kwargs.items() if k != "max_batch_size"}
            return VLLMGenerator(policy_dir, **vllm_kwargs)
        logger.info("vLLM not installed; sampling with transformers")
    return TransformersGenerator.from_dir(policy_dir, device=device, **kwargs)

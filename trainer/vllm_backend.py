"""vLLM sampling backend, used on CUDA machines where ``vllm`` is installed.

It has the interface of :class:`trainer.generation.TransformersGenerator`; both build on
:class:`trainer.generation_base.BaseGenerator`, and neither backend imports the other.
Prompts are tokenized the same way (chat template, no doubled BOS) and sent to vLLM as
token ids; each request is one vLLM prompt with ``SamplingParams(n=k, seed=...)``, so
``GenResult.seed`` is that request's seed and ``batch_row`` the sample's index among its
``n``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer.generation_base import BaseGenerator, Draw, DrawJob, SamplingParams
from trainer.prompting import eos_token_ids

logger = logging.getLogger(__name__)


def vllm_available() -> bool:
    """True when ``vllm`` is installed and a CUDA device is visible."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


class VLLMGenerator(BaseGenerator):
    """Sampler on ``vllm.LLM``; vLLM schedules and batches the requests itself."""

    backend = "vllm"

    def __init__(
        self,
        policy_dir: str | os.PathLike[str],
        *,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.5,
        max_redraw_rounds: int = 3,
        seed: int | None = None,
        **llm_kwargs: Any,
    ) -> None:
        super().__init__(max_redraw_rounds=max_redraw_rounds, seed=seed)
        from vllm import LLM

        self.policy_dir = Path(policy_dir)
        self.llm = LLM(
            model=str(self.policy_dir),
            tokenizer=str(self.policy_dir),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            **llm_kwargs,
        )
        self._tokenizer = self.llm.get_tokenizer()
        self.eos_ids = eos_token_ids(self._tokenizer, self.policy_dir)
        logger.info("vLLM generator ready for %s (eos ids %s)", self.policy_dir, self.eos_ids)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def close(self) -> None:
        """Shut the engine down and give its memory back, so that a redeploy can build the next
        policy's engine in the same worker process (the sampler calls this on a policy change).

        vLLM frees an ``LLM`` only when its engine core is shut down: ``LLM.shutdown()`` where the
        release has it, else the engine core's own ``shutdown()``; then the model-parallel groups
        vLLM set up are torn down and the CUDA cache emptied.
        """
        llm, self.llm = self.llm, None
        if llm is None:
            return
        shutdown = getattr(llm, "shutdown", None)
        if not callable(shutdown):
            shutdown = getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm
        try:
            from vllm.distributed import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except Exception:  # noqa: BLE001 - older or newer releases name these otherwise; gc still runs
            logger.debug("vLLM: no model-parallel state to tear down", exc_info=True)
        from trainer.device import free_memory

        free_memory()

    def _max_prompt_tokens(self, params: SamplingParams) -> int | None:
        max_len = self.llm.llm_engine.model_config.max_model_len
        return max(1, max_len - params.max_new_tokens)

    def _vllm_params(self, params: SamplingParams, n: int, seed: int) -> Any:
        from vllm import SamplingParams as VSamplingParams

        return VSamplingParams(
            n=n,
            temperature=params.temperature,
            top_p=params.top_p if not params.greedy else 1.0,
            top_k=-1,
            max_tokens=params.max_new_tokens,
            seed=seed,
            stop_token_ids=self.eos_ids,
        )

    def _draw(self, jobs: Sequence[DrawJob], params: SamplingParams) -> list[list[Draw]]:
        seeds = [self.next_seed() for _ in jobs]
        prompts = [{"prompt_token_ids": list(job.prompt_ids)} for job in jobs]
        sampling = [self._vllm_params(params, job.n, seed) for job, seed in zip(jobs, seeds)]
        started = time.perf_counter()
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)
        share = (time.perf_counter() - started) / max(1, sum(job.n for job in jobs))
        return [
            [self._to_draw(completion, seed, share, row) for row, completion in enumerate(output.outputs)]
            for output, seed in zip(outputs, seeds)
        ]

    def _to_draw(self, completion: Any, seed: int, gen_time_s: float, row: int) -> Draw:
        token_ids = list(completion.token_ids)
        ended_with_eos = bool(token_ids) and token_ids[-1] in self.eos_ids
        return Draw(
            text=completion.text,
            token_count=len(token_ids) - (1 if ended_with_eos else 0),
            finish_reason="length" if completion.finish_reason == "length" else "eos",
            seed=seed,
            gen_time_s=gen_time_s,
            batch_row=row,
        )

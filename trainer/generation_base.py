"""What every sampling backend shares: sampling parameters, requests and results, and
:class:`BaseGenerator` (grouping by parameters, K slots per request, redraw rounds).

The backends build on it: :class:`trainer.generation.TransformersGenerator` and
:class:`trainer.vllm_backend.VLLMGenerator`; :func:`trainer.generation.make_generator`
picks one. Neither backend module imports the other.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from trainer.prompting import encode_prompt, fit_messages, render_prompt

logger = logging.getLogger(__name__)

FinishReason = Literal["eos", "length"]
SEED_BITS = 31  # fits a signed 32-bit integer column and every backend's seed argument


@dataclass(frozen=True)
class SamplingParams:
    """Sampling parameters; ``temperature == 0`` means greedy decoding."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 128

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class GenRequest:
    """K completions wanted for one prompt, given as raw text or as chat messages.

    With ``messages`` the tokenizer's chat template is applied; with ``prompt`` the text is
    sent as a single user turn when the tokenizer has a chat template, else as raw text.
    """

    key: Any
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    k: int = 1
    params: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")


@dataclass
class GenResult:
    """One sampled completion. See the module docstring for what ``seed`` means.

    ``token_count`` counts generated tokens without padding and without the final EOS;
    ``gen_time_s`` is this completion's share of its batch's wall time (batch time / rows).
    """

    key: Any
    text: str
    seed: int
    token_count: int
    finish_reason: FinishReason
    gen_time_s: float
    params: dict[str, Any]
    batch_row: int = 0

    def sample_columns(self) -> dict[str, Any]:
        """The columns a stored sample keeps of this result (completions and evaluation
        samples alike): text, seed, params, token count, finish reason, generation time."""
        return {
            "text": self.text,
            "seed": int(self.seed),
            "params": dict(self.params),
            "token_count": int(self.token_count),
            "finish_reason": self.finish_reason,
            "gen_time_s": float(self.gen_time_s),
        }


@dataclass(frozen=True)
class Draw:
    """A backend's raw sample, before it is assigned to a request's slot."""

    text: str
    token_count: int
    finish_reason: FinishReason
    seed: int
    gen_time_s: float
    batch_row: int


@dataclass(frozen=True)
class DrawJob:
    """Draw ``n`` samples for one tokenized prompt."""

    prompt_ids: tuple[int, ...]
    n: int


def request_prompt_text(tokenizer: Any, request: GenRequest) -> str:
    """The rendered prompt of a request (trainer/prompting.py, as rollouts and training)."""
    return render_prompt(tokenizer, request.prompt if request.messages is None else None, request.messages)


def encode_request(tokenizer: Any, request: GenRequest, max_prompt_tokens: int | None = None) -> tuple[int, ...]:
    """Token ids of a request's prompt, left-truncated to ``max_prompt_tokens`` if given."""
    return tuple(encode_prompt(tokenizer, request_prompt_text(tokenizer, request), max_prompt_tokens, request.key))


def fit_request(tokenizer: Any, request: GenRequest, max_prompt_tokens: int | None = None) -> tuple[tuple[int, ...], int]:
    """Token ids of a request's prompt and how many of its oldest messages were cut so that
    it fits (:func:`trainer.prompting.fit_messages`: whole exchanges, system messages kept),
    then left-truncated to ``max_prompt_tokens`` if even that is too long."""
    if request.messages is None or max_prompt_tokens is None:
        return encode_request(tokenizer, request, max_prompt_tokens), 0
    kept, dropped = fit_messages(tokenizer, request.messages, max_prompt_tokens)
    text = render_prompt(tokenizer, None, kept)
    return tuple(encode_prompt(tokenizer, text, max_prompt_tokens, request.key)), dropped


def duplicate_slots(texts: Sequence[str | None]) -> list[int]:
    """Indexes of texts whose stripped form already appeared earlier (``None`` skipped)."""
    seen: set[str] = set()
    duplicates = []
    for index, text in enumerate(texts):
        if text is None:
            continue
        norm = text.strip()
        if norm in seen:
            duplicates.append(index)
        seen.add(norm)
    return duplicates


class BaseGenerator(abc.ABC):
    """Shared request handling: grouping by params, K slots per request, redraw rounds."""

    backend: str = "base"

    def __init__(self, *, max_redraw_rounds: int = 3, seed: int | None = None) -> None:
        self.max_redraw_rounds = max_redraw_rounds
        self._rng = random.Random(seed if seed is not None else int.from_bytes(os.urandom(8)))

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Any:
        """The policy's tokenizer."""

    @abc.abstractmethod
    def _draw(self, jobs: Sequence[DrawJob], params: SamplingParams) -> list[list[Draw]]:
        """Sample ``job.n`` completions for every job; one list of draws per job."""

    def _max_prompt_tokens(self, params: SamplingParams) -> int | None:
        return None

    def next_seed(self) -> int:
        return self._rng.getrandbits(SEED_BITS)

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Sample ``request.k`` completions per request; results grouped in request order."""
        by_params: dict[SamplingParams, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            by_params[request.params].append(index)
        results: list[list[GenResult]] = [[] for _ in requests]
        for params, indexes in by_params.items():
            group = [requests[i] for i in indexes]
            for index, group_results in zip(indexes, self._generate_group(group, params)):
                results[index] = group_results
        return [result for per_request in results for result in per_request]

    def _generate_group(self, requests: list[GenRequest], params: SamplingParams) -> list[list[GenResult]]:
        max_prompt = self._max_prompt_tokens(params)
        fitted = [fit_request(self.tokenizer, r, max_prompt) for r in requests]
        prompt_ids = [ids for ids, _ in fitted]
        cuts = [cut for _, cut in fitted]
        if params.greedy:
            return self._generate_greedy(requests, prompt_ids, params, cuts)
        slots: list[list[Draw | None]] = [[None] * r.k for r in requests]
        for round_index in range(self.max_redraw_rounds + 1):
            missing = [[i for i, d in enumerate(s) if d is None] for s in slots]
            if round_index > 0 and any(missing):
                logger.info("redrawing %d duplicate completions (round %d)", sum(map(len, missing)), round_index)
            self._fill(slots, missing, prompt_ids, params)
            if round_index == self.max_redraw_rounds:
                break
            if not self._clear_duplicates(slots):
                break
        self._log_remaining_duplicates(requests, slots)
        return [self._results(r, s, params, cut) for r, s, cut in zip(requests, slots, cuts)]

    def _fill(
        self,
        slots: list[list[Draw | None]],
        missing: list[list[int]],
        prompt_ids: list[tuple[int, ...]],
        params: SamplingParams,
    ) -> None:
        owners = [i for i, m in enumerate(missing) if m]
        if not owners:
            return
        jobs = [DrawJob(prompt_ids[i], len(missing[i])) for i in owners]
        for owner, draws in zip(owners, self._draw(jobs, params)):
            for slot, draw in zip(missing[owner], draws):
                slots[owner][slot] = draw

    @staticmethod
    def _clear_duplicates(slots: list[list[Draw | None]]) -> bool:
        """Empty every slot that duplicates an earlier one; True when any was emptied."""
        cleared = False
        for request_slots in slots:
            for index in duplicate_slots([d.text if d else None for d in request_slots]):
                request_slots[index] = None
                cleared = True
        return cleared

    @staticmethod
    def _log_remaining_duplicates(requests: list[GenRequest], slots: list[list[Draw | None]]) -> None:
        for request, request_slots in zip(requests, slots):
            dups = duplicate_slots([d.text if d else None for d in request_slots])
            if dups:
                logger.warning(
                    "prompt %r: %d completion(s) still duplicate after redraws; kept",
                    request.key,
                    len(dups),
                )

    def _generate_greedy(
        self, requests: list[GenRequest], prompt_ids: list[tuple[int, ...]], params: SamplingParams, cuts: list[int]
    ) -> list[list[GenResult]]:
        """Greedy decoding is deterministic: draw once per prompt and repeat it K times."""
        if any(r.k > 1 for r in requests):
            logger.warning("temperature 0 (greedy): the K completions of a prompt are identical")
        draws = self._draw([DrawJob(ids, 1) for ids in prompt_ids], params)
        return [self._results(r, d * r.k, params, cut) for r, d, cut in zip(requests, draws, cuts)]

    def _results(
        self, request: GenRequest, draws: Sequence[Draw | None], params: SamplingParams, context_cut: int = 0
    ) -> list[GenResult]:
        """The results of one request; ``context_cut`` (messages cut from the front of a long
        conversation, :func:`fit_request`) is recorded in their params when there was a cut."""
        record = {**params.to_dict(), "backend": self.backend, **({"context_cut": context_cut} if context_cut else {})}
        return [
            GenResult(
                key=request.key,
                text=d.text,
                seed=d.seed,
                token_count=d.token_count,
                finish_reason=d.finish_reason,
                gen_time_s=d.gen_time_s,
                params=dict(record),
                batch_row=d.batch_row,
            )
            for d in draws
            if d is not None
        ]

"""One prompting pipeline: labeling samples and PPO rollouts of the same prompt see the
same token ids and stop on the same EOS set (trainer/prompting.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from trainer.generation import GenRequest, SamplingParams, TransformersGenerator
from trainer.prompting import eos_token_ids, prompt_text
from trainer.stages.common import response_mask_from_eos, sample_responses


@pytest.fixture
def generator(tiny_policy_dir: Path) -> TransformersGenerator:
    from trainer.policy_io import load_policy

    model, tokenizer = load_policy(tiny_policy_dir, device="cpu")
    # A chat model whose generation config ends turns with one more token than the
    # tokenizer's EOS (SmolLM2-style checkpoints differ here): both paths stop on both.
    extra = next(i for i in range(1, 10) if i != tokenizer.eos_token_id)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, extra]
    return TransformersGenerator(model, tokenizer, max_batch_size=8, seed=1)


def _record(model: Any, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    original = model.generate

    def recording(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", recording)
    return calls


def _real_ids(ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    return ids[mask.bool()].tolist()


@pytest.mark.parametrize(
    "request_kw",
    [
        {"prompt": "Write a short poem about the sea."},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]},
    ],
)
def test_labeling_and_rollouts_get_the_same_prompt_ids_and_eos_set(
    generator: TransformersGenerator, monkeypatch: pytest.MonkeyPatch, request_kw: dict[str, Any]
) -> None:
    model, tokenizer = generator.model, generator.tokenizer
    calls = _record(model, monkeypatch)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=6)
    generator.generate([GenRequest(key="p", k=1, params=params, **request_kw)])
    item = request_kw.get("messages") or request_kw["prompt"]
    samples = sample_responses(model, tokenizer, [prompt_text(tokenizer, item)], max_new_tokens=6, temperature=1.0)

    labeling, rollout = calls
    assert _real_ids(labeling["input_ids"][0], labeling["attention_mask"][0]) == _real_ids(
        rollout["input_ids"][0], rollout["attention_mask"][0]
    )
    stop_labeling = sorted(labeling["eos_token_id"])
    stop_rollout = sorted(rollout["generation_config"].eos_token_id)
    assert stop_labeling == stop_rollout == eos_token_ids(tokenizer, model)
    assert len(stop_labeling) == 2
    assert samples.response_mask.shape[0] == 1


def test_a_rollout_ends_at_any_eos_of_the_set() -> None:
    responses = torch.tensor([[5, 7, 2, 9], [5, 3, 9, 9], [5, 6, 6, 6]])
    mask, has_eos = response_mask_from_eos(responses, [2, 3])
    assert has_eos.tolist() == [True, True, False]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]

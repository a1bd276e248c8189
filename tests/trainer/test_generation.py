"""Batched K-completion sampling with the transformers backend on the tiny policy."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer.generation import (
    GenRequest,
    GenResult,
    SamplingParams,
    TransformersGenerator,
    duplicate_slots,
    make_generator,
)

PROMPTS = ["hello world", "Write a short poem about the sea and the sky.", "yes"]
SAMPLE = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=8)


@pytest.fixture(scope="module")
def generator(tiny_policy_dir: Path) -> TransformersGenerator:
    return TransformersGenerator.from_dir(tiny_policy_dir, device="cpu", max_batch_size=8, seed=1234)


@pytest.fixture
def generate_calls(generator: TransformersGenerator, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record the keyword arguments of every ``model.generate`` call."""
    calls: list[dict[str, Any]] = []
    original = generator.model.generate

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(generator.model, "generate", counting)
    return calls


def _requests(k: int = 4, params: SamplingParams = SAMPLE) -> list[GenRequest]:
    return [GenRequest(key=f"p{i}", prompt=p, k=k, params=params) for i, p in enumerate(PROMPTS)]


def _by_key(results: list[GenResult]) -> dict[Any, list[GenResult]]:
    grouped: dict[Any, list[GenResult]] = {}
    for result in results:
        grouped.setdefault(result.key, []).append(result)
    return grouped


def test_k_distinct_completions_with_all_fields(generator: TransformersGenerator) -> None:
    results = generator.generate(_requests(k=4))
    assert [r.key for r in results] == [f"p{i}" for i in range(3) for _ in range(4)]
    for key, group in _by_key(results).items():
        texts = [r.text.strip() for r in group]
        assert len(set(texts)) == 4, (key, texts)
    for result in results:
        assert isinstance(result.text, str)
        assert isinstance(result.seed, int) and 0 <= result.seed < 2**31
        assert 0 <= result.token_count <= 8
        assert result.finish_reason in ("eos", "length")
        if result.finish_reason == "length":
            assert result.token_count == 8
        assert result.gen_time_s > 0
        assert result.params == {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "backend": "transformers"}
        assert 0 <= result.batch_row < generator.max_batch_size


def test_short_budget_mostly_finishes_by_length(generator: TransformersGenerator) -> None:
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=2)
    results = generator.generate(_requests(k=4, params=params))
    reasons = Counter(r.finish_reason for r in results)
    assert reasons["length"] >= 10, reasons
    assert all(r.token_count == 2 for r in results if r.finish_reason == "length")
    assert all(r.token_count < 2 for r in results if r.finish_reason == "eos")


def test_one_generate_call_per_batch(generator: TransformersGenerator, generate_calls: list[dict[str, Any]]) -> None:
    generator.max_redraw_rounds = 0  # no redraw rounds: the call count is exactly the batch count
    try:
        results = generator.generate(_requests(k=4))  # 12 sequences, batches of at most 8
    finally:
        generator.max_redraw_rounds = 3
    assert len(results) == 12
    assert [call["input_ids"].shape[0] for call in generate_calls] == [8, 4]


def test_requests_with_different_params_are_batched_separately(
    generator: TransformersGenerator, generate_calls: list[dict[str, Any]]
) -> None:
    other = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=4)
    requests = [
        GenRequest(key="a", prompt="hello world", k=2, params=SAMPLE),
        GenRequest(key="b", prompt="yes", k=2, params=other),
        GenRequest(key="c", prompt="apple banana", k=2, params=SAMPLE),
    ]
    results = generator.generate(requests)
    assert [r.key for r in results] == ["a", "a", "b", "b", "c", "c"]
    first_round = generate_calls[:2]
    assert sorted((c["temperature"], c["input_ids"].shape[0]) for c in first_round) == [(0.8, 2), (1.0, 4)]
    assert {r.params["max_new_tokens"] for r in results if r.key == "b"} == {4}


def test_chat_template_and_left_padding(generator: TransformersGenerator, generate_calls: list[dict[str, Any]]) -> None:
    requests = [
        GenRequest(key="short", prompt="yes", k=1, params=SAMPLE),
        GenRequest(
            key="chat",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Write a short poem about the sea."},
            ],
            k=1,
            params=SAMPLE,
        ),
    ]
    generator.generate(requests)
    call = generate_calls[0]
    input_ids, attention = call["input_ids"], call["attention_mask"]
    tokenizer = generator.tokenizer
    decoded = [tokenizer.decode(row[mask.bool()]) for row, mask in zip(input_ids, attention)]
    assert "<|im_start|>user\nyes<|im_end|>\n<|im_start|>assistant\n" in decoded
    assert (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n"
        "<|im_start|>assistant\n"
    ) in decoded
    short_row = decoded.index("<|im_start|>user\nyes<|im_end|>\n<|im_start|>assistant\n")
    assert attention[short_row, 0] == 0 and attention[short_row, -1] == 1  # padded on the left
    assert input_ids[short_row, 0] == generator.pad_id
    assert call["pad_token_id"] == generator.pad_id != tokenizer.eos_token_id
    assert tokenizer.eos_token_id in call["eos_token_id"]


def test_raw_text_without_chat_template(
    generator: TransformersGenerator, generate_calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generator.tokenizer, "chat_template", None)
    generator.generate([GenRequest(key="raw", prompt="hello world", k=1, params=SAMPLE)])
    expected = generator.tokenizer("hello world")["input_ids"]
    assert generate_calls[0]["input_ids"][0].tolist() == expected
    # Messages without a chat template are rendered as "role: content" lines, exactly as the
    # training stages render them (trainer/prompting.py).
    generator.generate([GenRequest(key="m", messages=[{"role": "user", "content": "hi"}], params=SAMPLE)])
    assert generate_calls[1]["input_ids"][0].tolist() == generator.tokenizer("user: hi\n")["input_ids"]


def test_token_count_excludes_trailing_eos_and_padding(generator: TransformersGenerator) -> None:
    eos, pad = generator.tokenizer.eos_token_id, generator.pad_id
    word = generator.tokenizer("hello world", add_special_tokens=False)["input_ids"]
    ended = generator._to_draw([*word, eos, pad, pad], seed=7, gen_time_s=0.1, row=3)
    assert (ended.token_count, ended.finish_reason, ended.text) == (len(word), "eos", "hello world")
    assert (ended.seed, ended.batch_row) == (7, 3)
    cut = generator._to_draw(word, seed=7, gen_time_s=0.1, row=0)
    assert (cut.token_count, cut.finish_reason) == (len(word), "length")
    # A pad token sampled mid-text is a real token, not padding.
    with_pad = generator._to_draw([word[0], pad, word[1]], seed=7, gen_time_s=0.1, row=0)
    assert with_pad.token_count == 3


def _duplicating_generate(original: Callable[..., torch.Tensor], rounds: int) -> Callable[..., torch.Tensor]:
    """A ``generate`` whose first ``rounds`` calls return row 0's output for every row."""
    state = {"calls": 0}

    def generate(*args: Any, **kwargs: Any) -> torch.Tensor:
        output = original(*args, **kwargs)
        state["calls"] += 1
        if state["calls"] <= rounds:
            output = output[:1].expand_as(output).clone()
        return output

    return generate


def test_duplicates_are_drawn_again(generator: TransformersGenerator, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    duplicating = _duplicating_generate(generator.model.generate, rounds=1)

    def recording(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(kwargs["input_ids"].shape[0])
        return duplicating(*args, **kwargs)

    monkeypatch.setattr(generator.model, "generate", recording)
    results = generator.generate([GenRequest(key="p", prompt="hello world", k=4, params=SAMPLE)])
    assert calls[:2] == [4, 3]  # all four equal, then the three duplicates drawn again
    assert len({r.text.strip() for r in results}) == 4


def test_persistent_duplicates_are_kept_after_bounded_rounds(
    generator: TransformersGenerator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []
    fixed = generator.tokenizer("hello world", add_special_tokens=False)["input_ids"] + [generator.tokenizer.eos_token_id]

    def always_the_same(*args: Any, **kwargs: Any) -> torch.Tensor:
        input_ids = kwargs["input_ids"]
        calls.append(input_ids.shape[0])
        generated = torch.tensor([fixed]).expand(input_ids.shape[0], -1)
        return torch.cat([input_ids, generated], dim=1)

    monkeypatch.setattr(generator.model, "generate", always_the_same)
    with caplog.at_level(logging.WARNING, logger="trainer.generation"):
        results = generator.generate([GenRequest(key="p", prompt="hello world", k=3, params=SAMPLE)])
    assert calls == [3, 2, 2, 2]  # first draw, then max_redraw_rounds (3) rounds for the 2 duplicates
    assert [r.text for r in results] == ["hello world"] * 3
    assert all(r.finish_reason == "eos" for r in results)
    assert "still duplicate after redraws" in caplog.text


def test_greedy_is_deterministic_and_uses_one_row_per_prompt(
    generator: TransformersGenerator, generate_calls: list[dict[str, Any]]
) -> None:
    params = SamplingParams(temperature=0, max_new_tokens=6)
    first = generator.generate(_requests(k=3, params=params))
    second = generator.generate(_requests(k=3, params=params))
    assert [c["input_ids"].shape[0] for c in generate_calls] == [3, 3]
    assert all(c["do_sample"] is False for c in generate_calls)
    assert [r.text for r in first] == [r.text for r in second]
    for group in _by_key(first).values():
        assert len(group) == 3 and len({r.text for r in group}) == 1


def test_same_generator_seed_reproduces_results(tiny_policy_dir: Path) -> None:
    def run() -> list[tuple[str, int]]:
        gen = TransformersGenerator.from_dir(tiny_policy_dir, device="cpu", max_batch_size=8, seed=99)
        return [(r.text, r.seed) for r in gen.generate(_requests(k=2))]

    assert run() == run()


def test_generation_does_not_disturb_global_rng(generator: TransformersGenerator) -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    generator.generate([GenRequest(key="p", prompt="yes", k=2, params=SAMPLE)])
    assert torch.equal(torch.rand(3), expected)


def test_make_generator_falls_back_to_transformers_on_cpu(tiny_policy_dir: Path) -> None:
    gen = make_generator(tiny_policy_dir, device="cpu", prefer_vllm=True, max_batch_size=4)
    assert isinstance(gen, TransformersGenerator)
    assert gen.max_batch_size == 4
    [result] = gen.generate([GenRequest(key="x", prompt="hello", k=1, params=SAMPLE)])
    assert result.params["backend"] == "transformers"


def test_request_and_params_validation() -> None:
    with pytest.raises(ValueError, match="exactly one of prompt or messages"):
        GenRequest(key=1, prompt="a", messages=[{"role": "user", "content": "a"}])
    with pytest.raises(ValueError, match="exactly one of prompt or messages"):
        GenRequest(key=1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        GenRequest(key=1, prompt="a", k=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    assert SamplingParams(temperature=0).greedy


def test_duplicate_slots_compares_stripped_text() -> None:
    assert duplicate_slots(["a", " a ", None, "b", "a\n", "c"]) == [1, 4]


def test_a_long_conversation_loses_its_oldest_exchanges_keeps_the_system_message_and_records_the_cut(
    generator: TransformersGenerator, generate_calls: list[dict[str, Any]]
) -> None:
    old = "hello world good bad great marker token answer " * 7  # about 130 tokens: two exchanges do not fit
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(3):
        messages += [{"role": "user", "content": f"turn {i} {old}"}, {"role": "assistant", "content": f"reply {i} {old}"}]
    messages.append({"role": "user", "content": "And the last question?"})
    results = generator.generate([GenRequest(key="long", messages=messages, k=2, params=SAMPLE)])
    tokenizer = generator.tokenizer
    row = generate_calls[0]["input_ids"][0]
    prompt = tokenizer.decode(row[generate_calls[0]["attention_mask"][0].bool()])
    assert len(row) <= generator.model.config.max_position_embeddings - SAMPLE.max_new_tokens
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")  # whole turns went
    assert "turn 0" not in prompt and prompt.endswith("And the last question?<|im_end|>\n<|im_start|>assistant\n")
    cut = results[0].params["context_cut"]
    assert cut == 4 and all(r.params["context_cut"] == cut for r in results)  # two of three exchanges
    assert f"turn {cut // 2}" in prompt  # the oldest exchange kept starts with its user turn
    short = generator.generate([GenRequest(key="short", messages=messages[:2], k=1, params=SAMPLE)])
    assert "context_cut" not in short[0].params

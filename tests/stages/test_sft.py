"""SFT: completion-only labels with EOS, dropout off, validation loss goes down."""

from __future__ import annotations

import pytest
import torch

from trainer.stages.common import IGNORE_INDEX, Cancelled, build_chat_prompt, set_dropout_off
from trainer.stages.sft import SFTConfig, SFTExample, collate_sft, encode_sft_example, train_sft

COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "sun": "yellow"}


def colour_examples(n: int, offset: int = 0) -> list[SFTExample]:
    """A learnable mapping: 'What colour is the X?' -> 'The X is C.'"""
    items = list(COLOURS.items())
    out = []
    for i in range(n):
        thing, colour = items[(i + offset) % len(items)]
        if i % 2:
            out.append(
                SFTExample(prompt=f"What colour is the {thing}?", messages=None, completion=f"The {thing} is {colour}.")
            )
        else:
            msgs = [{"role": "user", "content": f"What colour is the {thing}?"}]
            out.append(SFTExample(prompt=None, messages=msgs, completion=f"The {thing} is {colour}."))
    return out


def test_labels_cover_only_the_completion_and_its_eos(tokenizer):
    ex = SFTExample(prompt="Say hello", messages=None, completion="hello world")
    ids, labels = encode_sft_example(tokenizer, ex, max_length=128)
    prompt_ids = tokenizer(build_chat_prompt(tokenizer, "Say hello", None), add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer("hello world", add_special_tokens=False)["input_ids"]

    assert ids[: len(prompt_ids)] == prompt_ids
    assert labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert labels[len(prompt_ids) :] == completion_ids + [tokenizer.eos_token_id]
    assert labels[-1] == tokenizer.eos_token_id != tokenizer.pad_token_id

    short = SFTExample(prompt="Hi", messages=None, completion="ok")
    batch = collate_sft([encode_sft_example(tokenizer, e, 128) for e in (ex, short)], tokenizer.pad_token_id)
    row = batch["labels"][1]
    n_real = int(batch["attention_mask"][1].sum())
    assert n_real < batch["input_ids"].shape[1]
    assert (row[n_real:] == IGNORE_INDEX).all()  # padding is never trained
    assert row[n_real - 1] == tokenizer.eos_token_id


def test_eos_is_labelled_even_when_pad_equals_eos(tokenizer):
    tokenizer.pad_token = tokenizer.eos_token  # SmolLM2-style pad == eos
    examples = [SFTExample("a", None, "one two three four"), SFTExample("b", None, "x")]
    batch = collate_sft([encode_sft_example(tokenizer, e, 128) for e in examples], tokenizer.pad_token_id)
    for row, mask in zip(batch["labels"], batch["attention_mask"]):
        n_real = int(mask.sum())
        assert row[n_real - 1] == tokenizer.eos_token_id
        assert (row[n_real:] == IGNORE_INDEX).all()
    # The padded row really is padded with EOS ids that carry no label.
    assert (batch["input_ids"][1][batch["attention_mask"][1] == 0] == tokenizer.eos_token_id).all()


def test_truncation_keeps_the_response_budget(tokenizer):
    ex = SFTExample(prompt="word " * 200, messages=None, completion="the answer")
    ids, labels = encode_sft_example(tokenizer, ex, max_length=32)
    assert len(ids) == 32
    assert labels[-1] == tokenizer.eos_token_id
    assert (
        sum(1 for x in labels if x != IGNORE_INDEX)
        == len(tokenizer("the answer", add_special_tokens=False)["input_ids"]) + 1
    )


def test_set_dropout_off_zeroes_config_and_modules(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attention_dropout=0.3)
    model.model.extra_dropout = torch.nn.Dropout(0.5)
    set_dropout_off(model)
    assert model.config.attention_dropout == 0.0
    assert model.model.extra_dropout.p == 0.0
    assert all(getattr(m, "attention_dropout", 0.0) == 0.0 for m in model.modules())


def test_sft_lowers_validation_loss(policy, tokenizer, accelerator, step_log):
    torch.manual_seed(0)
    train, val = colour_examples(20), colour_examples(5, offset=2)
    config = SFTConfig(lr=3e-3, epochs=4, batch_size=4, max_length=64, warmup_ratio=0.0, seed=0)
    metrics = train_sft(policy, tokenizer, train, val, config, accelerator=accelerator, on_step=step_log)

    assert metrics["val_loss_after"] < 0.6 * metrics["val_loss_before"]
    assert metrics["steps"] == 20
    assert metrics["train_loss"] < metrics["val_loss_before"]
    losses = step_log.series("loss")
    assert len(losses) == 20 and all(stage == "sft" for stage, _, _ in step_log.calls)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert step_log.series("val_loss") == [metrics["val_loss_before"], metrics["val_loss_after"]]


def test_sft_gradient_accumulation_counts_optimizer_steps(policy, tokenizer, accelerator):
    config = SFTConfig(lr=1e-3, epochs=1, min_steps=0, batch_size=2, grad_accum=2, max_length=64)
    metrics = train_sft(policy, tokenizer, colour_examples(8), [], config, accelerator=accelerator)
    assert metrics["steps"] == 2
    assert "val_loss_before" not in metrics


def test_sft_cancel(policy, tokenizer, accelerator):
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(Cancelled):
        train_sft(policy, tokenizer, colour_examples(12), [], SFTConfig(batch_size=2), accelerator, None, should_stop)
    assert calls["n"] == 3

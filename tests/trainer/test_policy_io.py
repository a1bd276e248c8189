"""Validation, loading, pad-token handling and atomic saving of policy directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from trainer.device import pick_device, pick_dtype
from trainer.policy_io import (
    ADDED_PAD_TOKEN,
    PolicyLoadError,
    ensure_pad_token,
    load_policy,
    save_policy_atomic,
    validate_policy_dir,
)


@pytest.fixture
def policy_copy(tiny_policy_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_policy_dir, tmp_path / "policy"))


def test_device_and_dtype_follow_cuda_availability() -> None:
    device = pick_device()
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_dtype(torch.device("cpu")) is torch.float32
    assert pick_dtype("cuda") is torch.bfloat16


def test_valid_tiny_policy_passes(tiny_policy_dir: Path) -> None:
    validate_policy_dir(tiny_policy_dir)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="does not exist") as info:
        validate_policy_dir(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("config.json", "missing config.json"),
        ("model.safetensors", r"missing weights: no \*\.safetensors"),
        ("tokenizer.json", "missing tokenizer"),
    ],
)
def test_missing_files_are_named(policy_copy: Path, remove: str, message: str) -> None:
    (policy_copy / remove).unlink()
    with pytest.raises(PolicyLoadError, match=message):
        validate_policy_dir(policy_copy)


def test_legacy_bin_weights_get_a_hint(policy_copy: Path) -> None:
    (policy_copy / "model.safetensors").rename(policy_copy / "pytorch_model.bin")
    with pytest.raises(PolicyLoadError, match="found pytorch_model.bin"):
        validate_policy_dir(policy_copy)


def test_invalid_json_config(policy_copy: Path) -> None:
    (policy_copy / "config.json").write_text("{not json")
    with pytest.raises(PolicyLoadError, match="not valid JSON"):
        validate_policy_dir(policy_copy)


def test_masked_lm_architecture_is_rejected(policy_copy: Path) -> None:
    from transformers import BertConfig

    config = BertConfig(architectures=["BertForMaskedLM"]).to_dict()
    (policy_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(PolicyLoadError, match="BertForMaskedLM is not a causal language model"):
        validate_policy_dir(policy_copy)


def test_bert_config_without_architectures_is_rejected(policy_copy: Path) -> None:
    from transformers import BertConfig

    (policy_copy / "config.json").unlink()
    BertConfig().save_pretrained(policy_copy)
    with pytest.raises(PolicyLoadError, match="'bert' is configured as an encoder"):
        validate_policy_dir(policy_copy)


def test_encoder_decoder_model_type_is_rejected(policy_copy: Path) -> None:
    (policy_copy / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(PolicyLoadError, match="model_type 't5' is not a causal language model"):
        validate_policy_dir(policy_copy)


def test_load_failure_becomes_policy_load_error(policy_copy: Path) -> None:
    (policy_copy / "model.safetensors").write_bytes(b"definitely not safetensors")
    with pytest.raises(PolicyLoadError, match="cannot load policy"):
        load_policy(policy_copy, device="cpu")


def test_load_policy_eval_mode_and_pad(tiny_policy_dir: Path) -> None:
    model, tokenizer = load_policy(tiny_policy_dir, device="cpu")
    assert not model.training
    assert model.dtype is torch.float32
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_ensure_pad_token_replaces_eos_pad_with_endoftext(tiny_policy_dir: Path) -> None:
    model, tokenizer = load_policy(tiny_policy_dir, device="cpu")
    tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.eos_token_id
    pad_id = ensure_pad_token(tokenizer, model)
    assert tokenizer.pad_token == "<|endoftext|>"
    assert pad_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == pad_id
    assert model.generation_config.pad_token_id == pad_id


def test_ensure_pad_token_adds_pad_and_resizes_when_none_fits(tiny_policy_dir: Path) -> None:
    model, tokenizer = load_policy(tiny_policy_dir, device="cpu")
    # Make <|endoftext|> the EOS: the preferred pad is then not allowed.
    tokenizer.eos_token = "<|endoftext|>"
    tokenizer.pad_token = "<|endoftext|>"
    vocab_before = model.get_input_embeddings().num_embeddings
    pad_id = ensure_pad_token(tokenizer, model)
    assert tokenizer.pad_token == ADDED_PAD_TOKEN
    assert pad_id != tokenizer.eos_token_id
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) == vocab_before + 1
    assert model.config.pad_token_id == pad_id


def test_save_policy_atomic_round_trip(tiny_policy_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = load_policy(tiny_policy_dir, device="cpu")
    dest = save_policy_atomic(model, tokenizer, tmp_path / "policies" / "v1")
    assert dest == tmp_path / "policies" / "v1"
    assert [p.name for p in dest.parent.iterdir()] == ["v1"]  # no .tmp-* left behind
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (dest / name).is_file(), name
    reloaded, _ = load_policy(dest, device="cpu")
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)


def test_saved_tokenizer_config_is_portable(tiny_policy_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = load_policy(tiny_policy_dir, device="cpu")
    dest = save_policy_atomic(model, tokenizer, tmp_path / "v1")
    config = json.loads((dest / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # not the 5.x-only TokenizersBackend
    assert "extra_special_tokens" not in config
    assert config["additional_special_tokens"] == ["<|im_start|>"]
    assert "local_files_only" not in config and "is_local" not in config
    _, reloaded = load_policy(dest, device="cpu")
    assert "<|im_start|>" in reloaded.all_special_tokens
    assert reloaded.chat_template == tokenizer.chat_template
    assert reloaded("<|im_start|>user")["input_ids"] == tokenizer("<|im_start|>user")["input_ids"]


def test_save_policy_atomic_refuses_existing_dest(tiny_policy_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = load_policy(tiny_policy_dir, device="cpu")
    dest = tmp_path / "v1"
    dest.mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        save_policy_atomic(model, tokenizer, dest)
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]


def test_save_policy_atomic_cleans_up_on_failure(
    tiny_policy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = load_policy(tiny_policy_dir, device="cpu")

    def broken_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(tokenizer, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_policy_atomic(model, tokenizer, tmp_path / "v1")
    assert list(tmp_path.iterdir()) == []

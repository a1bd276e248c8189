"""Loading, validating and atomically saving policies (Hugging Face layout directories).

A policy directory holds ``config.json``, ``*.safetensors`` weights, a tokenizer and a
``generation_config.json``, so transformers, vLLM and TRL load it as it is. Everything
here is local-only: nothing is ever fetched from the Hugging Face Hub.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainer.device import pick_device, pick_dtype

logger = logging.getLogger(__name__)

#: Files of which at least one must exist for a tokenizer to be loadable.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")

#: Preferred pad token when the tokenizer has none or pads with EOS (SmolLM2, Qwen, ...).
PREFERRED_PAD_TOKEN = "<|endoftext|>"
#: Token added (and the embeddings resized) when no suitable pad token exists.
ADDED_PAD_TOKEN = "<|pad|>"
_OTHER_PAD_CANDIDATES = ("<|pad|>", "<pad>", "[PAD]")


class PolicyLoadError(Exception):
    """A policy directory is missing, incomplete, not a causal LM, or failed to load."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot load policy from {self.path}: {reason}")


def _causal_lm_class_names() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def _read_config(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise PolicyLoadError(path, "missing config.json (expected a Hugging Face model directory)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PolicyLoadError(path, f"config.json is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise PolicyLoadError(path, "config.json does not hold a JSON object")
    return config


def _check_weights(path: Path) -> None:
    if any(path.glob("*.safetensors")):
        return
    legacy = sorted(p.name for p in path.glob("*.bin"))
    hint = f" (found {', '.join(legacy)}; re-save it with safetensors)" if legacy else ""
    raise PolicyLoadError(path, f"missing weights: no *.safetensors file{hint}")


def _check_tokenizer(path: Path) -> None:
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise PolicyLoadError(
            path, f"missing tokenizer: none of {', '.join(TOKENIZER_FILES)} found"
        )


def _check_causal_lm(path: Path, config: dict[str, Any]) -> None:
    """Accept a config whose architectures (or, without them, model type) is a causal LM."""
    architectures = config.get("architectures") or []
    if architectures:
        if not set(architectures) & _causal_lm_class_names():
            raise PolicyLoadError(
                path,
                f"architecture {', '.join(architectures)} is not a causal language model "
                "(expected e.g. LlamaForCausalLM)",
            )
        return
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise PolicyLoadError(path, f"model_type {model_type!r} is not a causal language model")
    try:
        parsed = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds here
        raise PolicyLoadError(path, f"config.json cannot be parsed: {exc}") from exc
    # Encoder families (BERT, RoBERTa, ...) have a causal head only when is_decoder is set.
    if getattr(parsed, "is_encoder_decoder", False) or not getattr(parsed, "is_decoder", True):
        raise PolicyLoadError(
            path, f"model_type {model_type!r} is configured as an encoder, not a causal LM"
        )


def validate_policy_dir(path: str | os.PathLike[str]) -> None:
    """Raise :class:`PolicyLoadError` naming the first thing wrong with a policy directory."""
    path = Path(path)
    if not path.exists():
        raise PolicyLoadError(path, "directory does not exist")
    if not path.is_dir():
        raise PolicyLoadError(path, "not a directory")
    config = _read_config(path)
    _check_weights(path)
    _check_tokenizer(path)
    _check_causal_lm(path, config)


def _token_id_if_present(tokenizer: Any, token: str) -> int | None:
    """The id of ``token`` when it is in the vocabulary (``convert_tokens_to_ids`` maps
    unknown tokens to the unk id, so it cannot answer this)."""
    return tokenizer.get_vocab().get(token)


def _choose_pad_token(tokenizer: Any, eos_id: int | None) -> tuple[str, bool]:
    """Return ``(token, added)``: an existing special token distinct from EOS, or a new one."""
    for candidate in (PREFERRED_PAD_TOKEN, *_OTHER_PAD_CANDIDATES):
        token_id = _token_id_if_present(tokenizer, candidate)
        if token_id is not None and token_id != eos_id:
            return candidate, False
    return ADDED_PAD_TOKEN, True


def _resize_if_needed(model: Any, vocab_len: int) -> None:
    embeddings = model.get_input_embeddings()
    if embeddings is not None and embeddings.num_embeddings < vocab_len:
        logger.info("resizing token embeddings %d -> %d", embeddings.num_embeddings, vocab_len)
        model.resize_token_embeddings(vocab_len)


def ensure_pad_token(tokenizer: Any, model: Any | None = None) -> int:
    """Make the pad token exist and differ from EOS; return its id.

    When the tokenizer has no pad token, or pads with EOS (which would mask EOS out of
    training labels and teach the policy never to stop), the pad becomes
    ``<|endoftext|>`` when it exists and is not EOS, else another existing pad-like
    special token, else a newly added ``<|pad|>`` (embeddings resized). The model's
    ``config.pad_token_id`` and ``generation_config.pad_token_id`` follow the tokenizer.
    """
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id
    if pad_id is None or pad_id == eos_id:
        token, added = _choose_pad_token(tokenizer, eos_id)
        if added:
            tokenizer.add_special_tokens({"pad_token": token})
        else:
            tokenizer.pad_token = token
        pad_id = tokenizer.pad_token_id
        logger.info("pad token set to %r (id %d, eos id %s, added=%s)", token, pad_id, eos_id, added)
    if model is not None:
        _resize_if_needed(model, len(tokenizer))
        model.config.pad_token_id = pad_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = pad_id
    return pad_id


def load_policy(
    path: str | os.PathLike[str],
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> tuple[Any, Any]:
    """Validate and load ``(model, tokenizer)`` from a local directory, in eval mode.

    ``device`` defaults to :func:`pick_device` and ``dtype`` to :func:`pick_dtype`
    (``"auto"`` keeps the checkpoint's own dtype). The pad token is fixed with
    :func:`ensure_pad_token`. Every failure is raised as :class:`PolicyLoadError`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    validate_policy_dir(path)
    device = torch.device(device) if device is not None else pick_device()
    dtype = dtype or pick_dtype(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - surface any loader failure uniformly
        raise PolicyLoadError(path, f"{type(exc).__name__}: {exc}") from exc
    ensure_pad_token(tokenizer, model)
    model.to(device)
    model.eval()
    logger.info("loaded policy %s on %s (%s)", path, device, model.dtype)
    return model, tokenizer


def _fsync_tree(root: Path) -> None:
    """fsync every file under ``root`` and then the directories themselves."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_tokenizer_config_portable(policy_dir: Path) -> None:
    """Rewrite transformers-5-only keys of ``tokenizer_config.json`` so transformers 4.x
    (and the vLLM/TRL builds pinned to it) can load the tokenizer too.

    transformers 5 writes ``"tokenizer_class": "TokenizersBackend"`` (unknown to 4.x),
    ``extra_special_tokens`` as a list (4.x expects a dict there; both read
    ``additional_special_tokens``) and load-time flags (``is_local``,
    ``local_files_only``). Both versions load the rewritten file as a fast tokenizer.
    """
    path = policy_dir / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        additional = list(config.get("additional_special_tokens") or [])
        config["additional_special_tokens"] = additional + [t for t in extra if t not in additional]
        del config["extra_special_tokens"]
    for load_flag in ("is_local", "local_files_only"):
        config.pop(load_flag, None)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_policy_atomic(
    model: Any,
    tokenizer: Any,
    dest: str | os.PathLike[str],
    *,
    before_rename: Callable[[], None] | None = None,
) -> Path:
    """Write a policy (safetensors, tokenizer, generation config) to ``dest`` atomically.

    The tokenizer config is made loadable by transformers 4.x as well
    (:func:`make_tokenizer_config_portable`). Everything is written into
    ``dest.parent / ".tmp-{dest.name}-{uuid}"``, fsynced and
    renamed into place, so ``dest`` is either absent or complete. Raises
    :class:`FileExistsError` when ``dest`` exists; the temporary directory is removed on
    any failure. ``before_rename`` is called once the files are written, just before the
    rename (fault injection in tests).
    """
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"policy destination already exists: {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{dest.name}-{uuid.uuid4().hex}"
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        make_tokenizer_config_portable(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        _fsync_tree(tmp)
        if before_rename is not None:
            before_rename()
        if dest.exists():  # someone else won the race while we were writing
            raise FileExistsError(f"policy destination already exists: {dest}")
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(dest.parent)
    logger.info("saved policy to %s", dest)
    return dest

"""Accelerate and device plumbing of the stages: the Accelerator, seeding, gradient
checkpointing, dropout, per-process shards, where a model lives.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def get_accelerator(accelerator=None):
    """The caller's Accelerator, or a new one for this machine (see ``make_accelerator``)."""
    if accelerator is not None:
        return accelerator
    return make_accelerator("cuda" if torch.cuda.is_available() else "cpu")


def make_accelerator(device_type: str):
    """An Accelerator for ``device_type``: bf16 mixed precision on CUDA, none on CPU.

    accelerate keeps one process-wide ``AcceleratorState`` and refuses a second Accelerator
    with other settings. Another library in the same process (transformers' Trainer, TRL's
    trainers, which default to bf16) may have set it up differently, so a state that does not
    match is reset before ours is built. A worker runs one round at a time, so no live
    Accelerator is affected.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    cuda = device_type == "cuda"
    mixed_precision = "bf16" if cuda else "no"
    state = AcceleratorState._shared_state
    if state:
        current_device = getattr(state.get("device"), "type", None)
        if state.get("_mixed_precision") != mixed_precision or current_device != device_type:
            AcceleratorState._reset_state(reset_partial_state=True)
    # A config's batch size is per optimizer step (sft_batch_size: "demonstrations per
    # optimizer step"), whatever the number of processes: each rank takes its slice of every
    # batch (split_batches), so N ranks make the same steps as one process. With one process
    # this changes nothing.
    loaders = DataLoaderConfiguration(split_batches=True)
    if cuda:
        return Accelerator(mixed_precision=mixed_precision, dataloader_config=loaders)
    return Accelerator(cpu=True, mixed_precision=mixed_precision, dataloader_config=loaders)


def seed_everything(seed: int, accelerator=None) -> None:
    """Seed torch (and python/numpy via accelerate) differently on each process."""
    from accelerate.utils import set_seed

    set_seed(seed + (accelerator.process_index if accelerator is not None else 0))


def maybe_gradient_checkpointing(model: nn.Module, accelerator) -> None:
    """Turn on gradient checkpointing when training on CUDA (memory over speed).

    ``config.use_cache`` is left alone (it is saved with the policy); the stages pass
    ``use_cache=False`` to every training forward instead.
    """
    if accelerator.device.type != "cuda":
        return
    if hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def set_dropout_off(model: nn.Module) -> None:
    """Zero every dropout probability, in the config(s) and in the modules."""
    configs = []
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and all(cfg is not c for c in configs):
            configs.append(cfg)
    for cfg in configs:
        for key, value in list(vars(cfg).items()):
            if "dropout" in key and isinstance(value, float):
                setattr(cfg, key, 0.0)
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for attr in ("attention_dropout", "dropout", "resid_pdrop", "attn_pdrop", "embd_pdrop"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)


def model_device(model: nn.Module) -> torch.device:
    """Device of the first parameter (CPU for a parameterless module)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def forward_kwargs_supported(model: nn.Module) -> set[str]:
    """Names the model's ``forward`` accepts (to use ``logits_to_keep`` only where it exists)."""
    return set(inspect.signature(model.forward).parameters)


def shard(items: Sequence[Any], accelerator) -> list[Any]:
    """This process's share of ``items`` (round-robin), for exact distributed evaluation."""
    return list(items[accelerator.process_index :: accelerator.num_processes])

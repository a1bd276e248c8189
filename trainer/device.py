"""Device and dtype selection shared by the sampler and the trainer."""

from __future__ import annotations

import torch


def pick_device() -> torch.device:
    """Return the CUDA device when one is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(device: torch.device | str) -> torch.dtype:
    """Return bf16 on CUDA and fp32 elsewhere (CPU bf16 matmuls are slow and lossy)."""
    if torch.device(device).type == "cuda":
        return torch.bfloat16
    return torch.float32

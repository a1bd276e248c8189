"""Device and dtype selection shared by the sampler and the trainer."""

from __future__ import annotations

import gc

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


def free_memory() -> None:
    """Collect garbage and hand cached CUDA memory back (after a model is let go)."""
    gc.collect()
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


def set_torch_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op CPU threads (``RLHF_TORCH_THREADS``); None keeps torch's default.

    torch starts one thread per core. On a machine whose cores the web server, the database
    and other jobs share, fewer threads are often faster: threads of one op wait for each
    other whenever a core is taken (see docs/benchmarks.md, Sampling).
    """
    if threads is not None:
        torch.set_num_threads(threads)


def describe_device(device: torch.device) -> str:
    """``cuda (<name>, bf16)`` or ``cpu (<n> threads, fp32)``: a log line's device."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)}, bf16)"
    return f"cpu ({torch.get_num_threads()} threads, fp32)"

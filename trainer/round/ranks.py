"""The processes of a distributed round: how many, which one this is, and whose fault an error is."""

from __future__ import annotations

import torch.distributed as dist


def world_size() -> int:
    """Processes of this round: >1 only inside a launched distributed round."""
    try:
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    except Exception:  # noqa: BLE001
        return 1


def rank_tag() -> str:
    """``-rank<N>`` in a distributed round (for per-rank scratch directories), else empty."""
    if world_size() == 1:
        return ""
    return f"-rank{dist.get_rank()}"


def peer_failure(exc: BaseException) -> bool:
    """An error of the collective layer (a rank died or hung), not of the round itself."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(w in text for w in ("gloo", "nccl", "connection reset", "connection closed", "broken pipe",
                                   "timed out", "process group"))

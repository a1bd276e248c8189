"""Fixtures for the training-stage tests: one tiny Llama checkpoint per session."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from trainer.tiny import build_tiny_policy

logging.getLogger("transformers").setLevel(logging.ERROR)


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: the tiny model's ops are too small to gain from more, and
    with a busy second core a 2-thread barrier makes every op wait (10x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + BPE tokenizer (pad <|endoftext|> != eos <|im_end|>)."""
    return build_tiny_policy(tmp_path_factory.mktemp("tiny-policy"), hidden_size=64, num_layers=2)


@pytest.fixture()
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture()
def policy(tiny_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)


@pytest.fixture()
def accelerator():
    from trainer.stages.common import make_accelerator

    return make_accelerator("cpu")


class StepLog:
    """An ``on_step`` callback that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, dict[str, float]]] = []

    def __call__(self, stage: str, step: int, metrics: dict[str, float]) -> None:
        self.calls.append((stage, step, dict(metrics)))

    def series(self, key: str) -> list[float]:
        return [m[key] for _, _, m in self.calls if key in m]


@pytest.fixture()
def step_log() -> StepLog:
    return StepLog()

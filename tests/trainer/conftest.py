"""Shared fixtures for the trainer tests: one tiny policy built per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.tiny import build_tiny_policy


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama policy in Hugging Face layout (read-only: copy before editing)."""
    return build_tiny_policy(tmp_path_factory.mktemp("tiny-policy") / "tiny")

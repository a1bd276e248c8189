"""Where checkpoints live: ``<artifacts>/policies/vN`` and ``<artifacts>/reward_models/vN``.

Paths stored in the database (``Policy.artifact_path``, ``RewardModel.artifact_path``) are
relative to ``settings.resolved_artifacts_dir``, so a deployment can move its artifacts
directory (or mount it elsewhere on another worker machine) without rewriting rows. They
are always built here from a version number, never taken from a user, and
:func:`resolve` refuses anything that would point outside the artifacts directory.

This module imports no torch, so the web tier and the CLI can use it.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

POLICIES = "policies"
REWARD_MODELS = "reward_models"
#: The first version of each kind: policies start at v0 (the bootstrapped base), reward models at v1.
FIRST_VERSION = {POLICIES: 0, REWARD_MODELS: 1}
_VERSION_DIR = re.compile(r"^v(\d+)$")


def policy_rel_path(version: int) -> str:
    """``policies/vN``: the artifact path stored for policy version N."""
    return f"{POLICIES}/v{int(version)}"


def reward_model_rel_path(version: int) -> str:
    """``reward_models/vN``: the artifact path stored for reward model version N."""
    return f"{REWARD_MODELS}/v{int(version)}"


def resolve(artifacts_dir: Path, rel_path: str) -> Path:
    """The absolute directory of a stored artifact path; ValueError if it escapes the root."""
    root = Path(artifacts_dir).resolve()
    path = (root / rel_path).resolve()
    if path != root and root not in path.parents:
        raise ValueError(f"artifact path {rel_path!r} points outside the artifacts directory")
    return path


def versions_on_disk(artifacts_dir: Path, kind: str) -> list[int]:
    """Version numbers of the ``vN`` directories under ``<artifacts>/<kind>`` (sorted).

    A directory can exist without a database row: a worker killed between writing a
    checkpoint and registering it leaves one behind. New versions are numbered past these.
    """
    base = Path(artifacts_dir) / kind
    if not base.is_dir():
        return []
    found = []
    for child in base.iterdir():
        m = _VERSION_DIR.match(child.name)
        if m:
            found.append(int(m.group(1)))
    return sorted(found)


def next_free_version(artifacts_dir: Path, kind: str, registered_max: int | None) -> int:
    """One past the largest version either registered in the database or present on disk
    (the kind's :data:`FIRST_VERSION` when there is none)."""
    first = FIRST_VERSION[kind]
    candidates = [v for v in (registered_max, *versions_on_disk(artifacts_dir, kind)) if v is not None]
    return max(max(candidates) + 1, first) if candidates else first


def publish(artifacts_dir: Path, kind: str, staging: Path, registered_max: int | None) -> int:
    """Rename a complete ``staging`` directory to the first free ``<kind>/vN``; returns N.

    The one place versions are numbered, for policies and reward models alike: one past
    the largest registered or on-disk version, and on past any directory that appears
    meanwhile (another worker). The rename is atomic, so ``vN`` is absent or complete.
    ``registered_max`` is the largest version in the database (the caller reads it; this
    module touches no database). The round calls it through trainer/round/register.py.
    """
    root = Path(artifacts_dir)
    (root / kind).mkdir(parents=True, exist_ok=True)
    start = next_free_version(root, kind, registered_max)
    for version in range(start, start + 100):
        dest = root / kind / f"v{version}"
        if dest.exists():
            continue
        try:
            os.rename(staging, dest)
        except OSError:
            if dest.exists():
                continue
            raise
        return version
    raise RuntimeError(f"could not find a free {kind} version directory from v{start}")


def staging_dir(artifacts_dir: Path, kind: str, label: str) -> Path:
    """A fresh, not yet existing path beside ``<kind>/vN`` to write an artifact into."""
    base = Path(artifacts_dir) / kind
    base.mkdir(parents=True, exist_ok=True)
    return base / f".staging-{label}-{uuid.uuid4().hex[:8]}"

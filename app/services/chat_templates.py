"""Whether a policy checkpoint has a chat template, read from its files (no torch, no
tokenizer load): conversation sets need one, so that every conversation reaches the model
through its own template (trainer/prompting.py) rather than flattened into
``role: content`` lines.

Hugging Face keeps the template in ``tokenizer_config.json`` (``chat_template``: a string,
or a list of named templates) or, in newer versions, in ``chat_template.jinja`` /
``chat_template.json`` beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Policy
from app.services.errors import Conflict, Invalid


def has_chat_template(policy_dir: Path) -> bool:
    """True when the checkpoint in ``policy_dir`` defines a chat template."""
    if (policy_dir / "chat_template.jinja").is_file():
        return True
    for name, key in (("chat_template.json", "chat_template"), ("tokenizer_config.json", "chat_template")):
        path = policy_dir / name
        if not path.is_file():
            continue
        try:
            value = json.loads(path.read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if value:
            return True
    return False


def policy_dir(policy: Policy, artifacts_dir: Path) -> Path:
    """The checkpoint directory of ``policy`` (its artifact path stays inside the artifacts dir)."""
    root = Path(artifacts_dir).resolve()
    path = (root / policy.artifact_path).resolve()
    if path != root and root not in path.parents:
        raise Invalid(f"policy v{policy.version}'s artifact path points outside the artifacts directory")
    return path


def require_chat_policy(db: Session, artifacts_dir: Path) -> Policy:
    """The deployed policy, which must have a chat template (conversation sets are sampled
    with it). Conflict (409) when none is deployed; Invalid (422) when it has no template."""
    policy = db.scalar(select(Policy).where(Policy.deployed.is_(True)))
    if policy is None:
        raise Conflict("a conversation set needs a deployed policy to sample replies; deploy one first")
    if not has_chat_template(policy_dir(policy, artifacts_dir)):
        raise Invalid(
            f"the deployed policy v{policy.version} has no chat template, so a conversation cannot be "
            "rendered for it (it would be flattened into plain text); deploy a checkpoint whose "
            "tokenizer defines chat_template"
        )
    return policy

"""Builders for conversation-set tests: a deployed policy whose checkpoint declares a chat
template (read from its files, as set creation does), a conversation set with seeds, and
the sampler's write path for replies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db import Database
from app.models import Completion, ConversationNode
from app.services import policies
from tests.factories import make_policy

CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def deploy_chat_policy(database: Database, artifacts_dir: Path, *, chat_template: bool = True) -> int:
    """A deployed policy row whose directory has a tokenizer_config.json (with or without a
    chat template). Returns its id."""
    with database.session() as db:
        policy = make_policy(db)
        policy.artifact_path = f"policies/v{policy.version}"
        path = Path(artifacts_dir) / policy.artifact_path
        path.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
        if chat_template:
            config["chat_template"] = CHAT_TEMPLATE
        (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
        return policy.id


def create_conversation_set(
    client: TestClient, admin: Any, name: str = "chats", *, k: int = 2, seeds: list[Any] | None = None, **settings: Any
) -> dict[str, Any]:
    """POST the set (kind conversation, ``settings`` as its conversation settings) and its seeds."""
    body = {"name": name, "k": k, "kind": "conversation", "conversation": settings}
    r = client.post("/api/v1/prompt-sets", json=body, headers=admin.headers)
    assert r.status_code == 201, r.text
    ps = r.json()
    seeds = seeds if seeds is not None else [{"prompt": "Tell me about tea."}]
    r = client.post(f"/api/v1/prompt-sets/{ps['id']}/prompts", json={"prompts": seeds}, headers=admin.headers)
    assert r.status_code == 200, r.text
    return ps


def sample_replies(database: Database, prompt_id: int, texts: list[str]) -> list[int]:
    """Write sampled replies of the deployed policy through the sampler's write path
    (``policies.add_completions``); returns the completion ids."""
    with database.session() as db:
        policy = policies.deployed_policy(db)
        assert policy is not None
        rows = [
            {"prompt_id": prompt_id, "text": t, "seed": i, "params": {"temperature": 0.7}, "token_count": len(t.split())}
            for i, t in enumerate(texts)
        ]
        policies.add_completions(db, policy.id, {prompt_id: len(texts)}, rows)
        db.commit()
        return list(
            db.scalars(select(Completion.id).where(Completion.prompt_id == prompt_id).order_by(Completion.id))
        )


def context_prompt_ids(database: Database, prompt_set_id: int) -> list[int]:
    """The context prompts of a set's user nodes, oldest first."""
    with database.session() as db:
        return list(
            db.scalars(
                select(ConversationNode.prompt_id)
                .where(ConversationNode.prompt_set_id == prompt_set_id, ConversationNode.role == "user")
                .order_by(ConversationNode.id)
            )
        )

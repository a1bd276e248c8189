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


def check_tree(db: Any, prompt_set_id: int, branching: int, now: Any) -> dict[str, int]:
    """Assert the invariants of a set's conversation trees; returns node counts by role.

    Every node continues its parent (roles alternate, depth and turn follow), every user
    node's context prompt is exactly the path from its seed to it, every sampled reply
    hangs under the context it was sampled for, no reply has more user turns (or live and
    submitted continue tasks) than ``branching``, no two user turns under one reply are the
    same, every rank task's context is a real path with replies of that context, and every
    submitted continue task wrote exactly one node.
    """
    from collections import Counter

    from app.models import Prompt, Task, TaskStatus
    from app.services import conversations
    from app.services.slots import takes_slot

    nodes = {n.id: n for n in db.scalars(select(ConversationNode).where(ConversationNode.prompt_set_id == prompt_set_id))}
    for n in nodes.values():
        if n.parent_id is None:
            assert n.role == "user" and n.depth == 0 and n.turn == 1 and n.root_id is None, n.id
            continue
        parent = nodes[n.parent_id]
        assert n.role != parent.role and n.depth == parent.depth + 1, n.id
        assert n.turn == parent.turn + (1 if n.role == "user" else 0) and n.root_id == (parent.root_id or parent.id)
        assert n.context_chars == parent.context_chars + len(n.content)

    def path(n: ConversationNode) -> list[ConversationNode]:
        out = [n]
        while out[-1].parent_id is not None:
            out.append(nodes[out[-1].parent_id])
        return out[::-1]

    for n in nodes.values():
        if n.role == "user":
            prompt = db.get(Prompt, n.prompt_id)
            messages = conversations.context_messages(prompt)
            chain = path(n)
            system = messages[: len(messages) - len(chain)]
            assert all(m["role"] == "system" for m in system), n.id
            assert messages[len(system):] == [{"role": x.role, "content": x.content} for x in chain], n.id
        elif n.completion_id is not None:
            completion = db.get(Completion, n.completion_id)
            assert completion.prompt_id == nodes[n.parent_id].prompt_id and completion.text == n.content
    children = Counter(n.parent_id for n in nodes.values() if n.role == "user" and n.parent_id is not None)
    assert max(children.values(), default=0) <= branching, children
    turns = Counter((n.parent_id, n.content) for n in nodes.values() if n.role == "user" and n.parent_id is not None)
    assert max(turns.values(), default=0) <= 1, [k for k, v in turns.items() if v > 1]

    by_prompt = {n.prompt_id: n for n in nodes.values() if n.role == "user"}
    replies_of: dict[int, set[int]] = {}
    for n in nodes.values():
        if n.completion_id is not None:
            replies_of.setdefault(n.parent_id or 0, set()).add(n.completion_id)
    for task in db.scalars(select(Task).where(Task.prompt_set_id == prompt_set_id)):
        context = by_prompt.get(task.prompt_id)
        assert context is not None, f"task {task.id} is not on a context of the tree"
        if task.kind == "rank":
            assert set(task.completion_ids) <= replies_of.get(context.id, set()), task.id
        if task.kind == "continue":
            assert nodes[task.node_id].parent_id == context.id, task.id
            written = [n for n in nodes.values() if n.task_id == task.id]
            assert len(written) == (1 if task.status == TaskStatus.SUBMITTED else 0), task.id
    slots = Counter(
        db.scalars(select(Task.node_id).where(Task.prompt_set_id == prompt_set_id, Task.kind == "continue", takes_slot(now)))
    )
    assert max(slots.values(), default=0) <= branching, slots
    return dict(Counter(n.role for n in nodes.values()))

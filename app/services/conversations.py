"""Conversation sets: message trees grown by labelers and the deployed policy.

A prompt set of kind ``conversation`` holds trees of :class:`~app.models.ConversationNode`
(app/models/conversations.py). Each user node's context (the path from the seed to it) is a
chat :class:`~app.models.Prompt`, so the rest of the product treats a context as any other
prompt:

* the sampler (trainer/sampler.py, ``policies.sampling_plan``) samples K replies for it
  with the deployed policy through the one prompting pipeline (trainer/prompting.py), and
  :func:`add_sampled_replies` hangs them in the tree as assistant nodes;
* **rank** tasks show the context and its K replies (the usual slots, ``overlap`` =
  rankers per node); a ranking's best group counts as a vote for those replies
  (:func:`refresh_best`);
* **demonstrate** tasks ask for the assistant turn; the written reply becomes an assistant
  node (:func:`add_written_reply`);
* **continue** tasks (app/services/continue_tasks.py) give a labeler
  the context ending in a reply that was ranked best (or written) to write the next user
  turn; the new context is a new prompt, which the sampler then answers, and so on.

Limits (the set's ``conversation`` settings, :class:`ConversationSettings`): user turns per
conversation, continuations per reply (branching), and characters per context. Rankers per
node is the set's ``overlap``.

Continue slots belong to the reply node (``Task.node_id``): at most ``branching`` tasks
that take a slot (submitted, or leased and live; app/services/slots.py) per reply, and a
labeler is kept off a reply by any of their own tasks there that has not expired. Claims
and submissions recount under the context prompt's row lock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from app.models import (
    Completion,
    ConversationNode,
    Demonstration,
    NodeSource,
    Prompt,
    PromptSet,
    Ranking,
    SubmissionStatus,
    Task,
)
from app.services.conversation_settings import CONVERSATION, ConversationSettings, check_settings
from app.services.errors import Conflict, Invalid

def is_conversation_kind(kind: str | None) -> bool:
    """Whether a prompt set of this ``kind`` holds conversation trees."""
    return kind == CONVERSATION


def is_conversation(ps: PromptSet) -> bool:
    return is_conversation_kind(ps.kind)


def settings_of(ps: PromptSet) -> ConversationSettings:
    if not is_conversation(ps):
        raise Invalid(f"prompt set {ps.id} is not a conversation set")
    return ConversationSettings(**check_settings(ps.conversation))


# --- contexts -----------------------------------------------------------------------


def context_messages(prompt: Prompt) -> list[dict[str, str]]:
    """A context prompt's messages (a text seed as one user message)."""
    if prompt.messages:
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt.messages]
    return [{"role": "user", "content": prompt.text or ""}]


def _chars(messages: Iterable[dict[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages)


def seed_problem(ps: PromptSet, text: str | None, messages: list[dict[str, str]] | None) -> str | None:
    """Why an imported prompt cannot seed a conversation of ``ps``, or None when it can: a
    seed is one opening user message, optionally after a system message, within the set's
    context size."""
    if messages is not None:
        roles = [m["role"] for m in messages]
        if roles not in (["user"], ["system", "user"]):
            return (
                "a conversation seed is one opening user message (optionally after a system message), "
                f"not the roles {', '.join(roles)}"
            )
        size = _chars(messages)
    else:
        size = len(text or "")
    limit = settings_of(ps).max_context_chars
    if size > limit:
        return f"the seed has {size} characters; the set's contexts hold at most {limit}"
    return None


def add_seeds(db: Session, ps: PromptSet, hashes: Iterable[str]) -> int:
    """Root user nodes for the prompts of ``ps`` with these content hashes that have none."""
    hashes = list(hashes)
    added = 0
    for start in range(0, len(hashes), 500):
        chunk = hashes[start : start + 500]
        prompts = db.scalars(
            select(Prompt).where(
                Prompt.prompt_set_id == ps.id,
                Prompt.content_hash.in_(chunk),
                ~exists().where(ConversationNode.prompt_id == Prompt.id),
            )
        ).all()
        for prompt in prompts:
            messages = context_messages(prompt)
            db.add(
                ConversationNode(
                    prompt_set_id=ps.id, parent_id=None, root_id=None, role="user", content=messages[-1]["content"],
                    source=NodeSource.SEED.value, depth=0, turn=1, context_chars=_chars(messages),
                    prompt_id=prompt.id, best_votes=0,
                )
            )
            added += 1
    db.flush()
    return added


def add_child(parent: ConversationNode, role: str, content: str, source: NodeSource, **fields: Any) -> ConversationNode:
    return ConversationNode(
        prompt_set_id=parent.prompt_set_id,
        root_id=parent.root_id or parent.id,
        parent_id=parent.id,
        role=role,
        content=content,
        source=source.value,
        depth=parent.depth + 1,
        turn=parent.turn + (1 if role == "user" else 0),
        context_chars=parent.context_chars + len(content),
        best_votes=0,
        **fields,
    )


def add_sampled_replies(db: Session, completions: Iterable[Completion]) -> int:
    """Assistant nodes for sampled completions of conversation contexts (the sampler's
    write path, ``policies.add_completions``); completions of other prompts are ignored.
    The reply's parent is the user node of the context it was sampled for."""
    by_prompt: dict[int, list[Completion]] = {}
    for c in completions:
        by_prompt.setdefault(c.prompt_id, []).append(c)
    if not by_prompt:
        return 0
    contexts = db.scalars(select(ConversationNode).where(ConversationNode.prompt_id.in_(list(by_prompt)))).all()
    added = 0
    for node in contexts:
        for c in by_prompt[node.prompt_id or 0]:
            db.add(add_child(node, "assistant", c.text, NodeSource.SAMPLED, completion_id=c.id))
            added += 1
    if added:
        db.flush()
    return added


def add_written_reply(db: Session, demonstration: Demonstration) -> ConversationNode | None:
    """The assistant node of a demonstration written for a conversation context (None for
    other prompts)."""
    context = db.scalar(select(ConversationNode).where(ConversationNode.prompt_id == demonstration.prompt_id))
    if context is None:
        return None
    node = add_child(
        context, "assistant", demonstration.text, NodeSource.WRITTEN,
        demonstration_id=demonstration.id, author_id=demonstration.labeler_id,
    )
    db.add(node)
    db.flush()
    return node


def refresh_best(db: Session, prompt_ids: Iterable[int]) -> None:
    """Recount, for the sampled replies of these contexts, the active rankings that put
    each in their best group (``best_votes``; "all unacceptable" rankings vote for none).
    Called whenever a ranking is stored, undone or requeued."""
    ids = sorted(set(prompt_ids))
    for start in range(0, len(ids), 500):
        _refresh_best(db, ids[start : start + 500])
    db.flush()


def _refresh_best(db: Session, ids: list[int]) -> None:
    parents = select(ConversationNode.id).where(ConversationNode.prompt_id.in_(ids))
    replies = db.execute(
        select(ConversationNode.id, ConversationNode.completion_id, ConversationNode.best_votes).where(
            ConversationNode.parent_id.in_(parents), ConversationNode.completion_id.is_not(None)
        )
    ).all()
    if not replies:
        return
    votes: Counter[int] = Counter()
    for ranking in db.scalars(
        select(Ranking.ranking).where(
            Ranking.prompt_id.in_(ids),
            Ranking.status == SubmissionStatus.ACTIVE,
            Ranking.all_unacceptable.is_(False),
        )
    ):
        if ranking:
            votes.update(int(c) for c in ranking[0])
    for node_id, completion_id, current in replies:
        n = votes.get(int(completion_id), 0)
        if n != current:
            db.execute(update(ConversationNode).where(ConversationNode.id == node_id).values(best_votes=n))


def check_reply_removable(db: Session, demonstration_id: int) -> None:
    """A written reply that a labeler has continued cannot be taken back (undo)."""
    node = db.scalar(select(ConversationNode.id).where(ConversationNode.demonstration_id == demonstration_id))
    if node is not None and db.scalar(select(ConversationNode.id).where(ConversationNode.parent_id == node).limit(1)):
        raise Conflict("this reply has been continued by a labeler; it can no longer be undone")


# --- what a task shows --------------------------------------------------------------


def task_conversation(db: Session, task: Task, prompt: Prompt) -> tuple[list[dict[str, str]], dict[str, Any]] | None:
    """For a task on a conversation context: the messages it shows and where it stands in
    the tree (``conversation``), or None for other prompts. A continue task's messages end
    with the reply being continued."""
    ps = db.get(PromptSet, task.prompt_set_id)  # usually in the session already (the claim loaded it)
    if ps is None or not is_conversation(ps):
        return None
    context = db.scalar(select(ConversationNode).where(ConversationNode.prompt_id == prompt.id))
    if context is None:
        return None
    cs = settings_of(ps)
    messages = context_messages(prompt)
    info: dict[str, Any] = {
        "tree_id": context.root_id or context.id,
        "context_node_id": context.id,
        "turn": context.turn,
        "max_turns": cs.max_turns,
        "max_context_chars": cs.max_context_chars,
        "context_chars": context.context_chars,
        "reply_node_id": None,
    }
    if task.kind == "continue" and task.node_id is not None:
        reply = db.get(ConversationNode, task.node_id)
        if reply is not None:
            messages.append({"role": "assistant", "content": reply.content})
            info.update(reply_node_id=reply.id, turn=reply.turn + 1, context_chars=reply.context_chars)
    return messages, info

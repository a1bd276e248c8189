"""Continue tasks of conversation sets: a labeler takes a context that ends in a reply ranked
best (or written) and writes the next user turn (``POST /tasks/{id}/continuation``).

Continue slots belong to the reply node (``Task.node_id``): at most ``branching`` tasks
that take a slot (submitted, or leased and live; app/services/slots.py) per reply, and a
labeler is kept off a reply by any of their own tasks there that has not expired. Claims
and submissions recount under the context prompt's row lock. The trees themselves (seeds,
replies, best votes, what a task shows) are app/services/conversations.py.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from app.models import (
    ConversationNode,
    NodeSource,
    Prompt,
    PromptSet,
    Task,
    TaskStatus,
    User,
)
from app.models.base import utcnow
from app.services.conversation_settings import ConversationSettings
from app.services.conversations import add_child, context_messages, is_conversation, settings_of
from app.services.errors import Conflict, Invalid, NotFound
from app.services.prompt_sets import content_hash, get_prompt_set, wants_demonstration
from app.services.slots import MINE, SlotCheck, keeps_labeler_off, lock_prompt, takes_slot
from app.services.task_states import SUBMITTED, enter_state, own_task


def continuable() -> Any:
    """Assistant nodes a labeler may continue: written, or ranked best at least once."""
    return or_(ConversationNode.best_votes > 0, ConversationNode.source == NodeSource.WRITTEN.value)


def _continue_taken(now: datetime, node: Any, exclude_task_id: int | None = None) -> Any:
    conds = [Task.node_id == node, Task.kind == "continue", takes_slot(now)]
    if exclude_task_id is not None:
        conds.append(Task.id != exclude_task_id)
    return select(func.count(Task.id)).where(*conds).scalar_subquery()


def _labeler_on(now: datetime, node: Any, labeler_id: Any) -> Any:
    t = aliased(Task)
    return exists().where(
        t.node_id == node, t.kind == "continue", t.labeler_id == labeler_id, keeps_labeler_off(now, t)
    )


def _open_replies(ps: PromptSet, cs: ConversationSettings, labeler_id: int, now: datetime) -> Any:
    """Replies of ``ps`` with a free continue slot for this labeler, with their context
    prompt: fewest continuations first (every good reply gets one before any gets two),
    then earlier turns, then oldest."""
    reply = ConversationNode
    context = aliased(ConversationNode)
    taken = _continue_taken(now, reply.id)
    return (
        select(reply.id, context.prompt_id)
        .join(context, context.id == reply.parent_id)
        .where(
            reply.prompt_set_id == ps.id,
            reply.role == "assistant",
            continuable(),
            reply.turn < cs.max_turns,
            reply.context_chars < cs.max_context_chars,
            taken < cs.branching,
            ~_labeler_on(now, reply.id, labeler_id),
        )
        .order_by(taken, reply.turn, reply.id)
        .limit(1)
    )


def claim_continue(
    db: Session, ps: PromptSet, labeler_id: int, now: datetime, max_tries: int = 20
) -> tuple[int, int] | None:
    """(context prompt id, reply node id) of a new continue task for this labeler, or None.

    Finds the first open reply, locks its context prompt (waiting: claims and submissions
    on the same context serialise) and recounts under the lock, so two labelers never
    take more continue slots of a reply than ``branching``."""
    cs = settings_of(ps)
    rejected: list[int] = []
    for _ in range(max_tries):
        query = _open_replies(ps, cs, labeler_id, now)
        if rejected:
            query = query.where(ConversationNode.id.not_in(rejected))
        row = db.execute(query).first()
        if row is None:
            return None
        node_id, prompt_id = int(row[0]), int(row[1])
        lock_prompt(db, prompt_id)
        if check_continue_slot(db, node_id, labeler_id, cs.branching, now).ok:
            return prompt_id, node_id
        rejected.append(node_id)
    return None


def check_continue_slot(
    db: Session, node_id: int, labeler_id: int, branching: int, now: datetime, exclude_task_id: int | None = None
) -> SlotCheck:
    """Whether this labeler may hold a continue slot of reply ``node_id`` now (at most
    ``branching`` per reply; none where they already have a task). Call it holding the
    context prompt's lock."""
    mine = db.scalar(
        select(func.count(Task.id)).where(
            Task.node_id == node_id, Task.kind == "continue", Task.labeler_id == labeler_id,
            keeps_labeler_off(now), *([Task.id != exclude_task_id] if exclude_task_id else []),
        )
    )
    if mine:
        return SlotCheck(False, MINE)
    taken = db.scalar(select(_continue_taken(now, bindparam("n"), exclude_task_id)), {"n": node_id}) or 0
    if taken >= branching:
        return SlotCheck(
            False, f"reply {node_id} already has {taken} continuation(s) or claims, the set's branching limit"
        )
    return SlotCheck(True)


def get_node(db: Session, node_id: int) -> ConversationNode:
    node = db.get(ConversationNode, node_id)
    if node is None:
        raise NotFound(f"conversation node {node_id} not found")
    return node


def submit_continuation(
    db: Session,
    task_id: int,
    user: User,
    *,
    text: str,
    reply_id: int | None = None,
    max_chars: int,
    time_spent_s: float | None = None,
    now: datetime | None = None,
) -> tuple[ConversationNode, bool]:
    """Store the next user turn of a continue task. Returns (the new user node, created).

    ``reply_id`` (default: the task's reply) names the assistant reply to continue; it must
    be a reply of the task's context that was ranked best or written. The turn makes a new
    context prompt (the path plus this turn) that the sampler answers with K replies. The
    identical turn again returns the stored node (``created`` False); a different one on a
    submitted task is a Conflict. Run it inside :func:`app.db.transact`.
    """
    from app.services.submissions import check_kind, check_open, check_time_spent, written_text

    now = now or utcnow()
    task = own_task(db, task_id, user, lock=True)
    check_kind(task, "continue")
    body = written_text(text, max_chars, what="the turn", empty_hint="write what the user says next")
    if "\x00" in body:
        raise Invalid("the turn contains a NUL character")
    spent = check_time_spent(time_spent_s)
    ps = get_prompt_set(db, task.prompt_set_id)
    cs = settings_of(ps)
    context = db.scalar(select(ConversationNode).where(ConversationNode.prompt_id == task.prompt_id))
    if context is None:
        raise NotFound(f"task {task.id}'s context is not in a conversation tree")
    reply = get_node(db, reply_id if reply_id is not None else int(task.node_id or 0))
    if reply.parent_id != context.id or reply.role != "assistant":
        raise Invalid(f"node {reply.id} is not a reply of task {task.id}'s context")

    existing = db.scalar(select(ConversationNode).where(ConversationNode.task_id == task.id))
    if existing is not None and task.status == TaskStatus.SUBMITTED:
        if existing.content == body and existing.parent_id == reply.id:
            return existing, False
        raise Conflict(f"task {task.id} already has a different continuation; undo it first to change it")
    check_open(db, task, now)
    lock_prompt(db, task.prompt_id)
    db.refresh(reply)
    if not (reply.source == NodeSource.WRITTEN.value or reply.best_votes > 0):
        raise Invalid(
            f"reply {reply.id} was never ranked best by a labeler; continue from a best-ranked or written reply"
        )
    if reply.turn + 1 > cs.max_turns:
        raise Invalid(f"turn {reply.turn + 1} is past the set's limit of {cs.max_turns} user turns per conversation")
    size = reply.context_chars + len(body)
    if size > cs.max_context_chars:
        raise Invalid(
            f"the conversation would have {size} characters, over the set's context limit of {cs.max_context_chars}"
        )
    slot = check_continue_slot(db, reply.id, user.id, cs.branching, now, exclude_task_id=task.id)
    if not slot.ok:
        raise Conflict(slot.reason if slot.reason != MINE else f"you already continue reply {reply.id} in another task")

    parent_prompt = db.get(Prompt, task.prompt_id)
    assert parent_prompt is not None
    messages = [*context_messages(parent_prompt), {"role": "assistant", "content": reply.content},
                {"role": "user", "content": body}]
    digest = content_hash(None, messages)
    if db.scalar(select(Prompt.id).where(Prompt.prompt_set_id == ps.id, Prompt.content_hash == digest)):
        raise Conflict("another labeler already continued this reply with the same turn")
    prompt = Prompt(
        prompt_set_id=ps.id, text=None, messages=messages, split=parent_prompt.split, content_hash=digest,
        meta={"conversation_parent_prompt_id": parent_prompt.id},
        wants_demonstration=wants_demonstration(digest, ps.demonstration_share), is_gold=False,
        created_at=now,
    )
    db.add(prompt)
    db.flush()
    node = add_child(reply, "user", body, NodeSource.CONTINUATION, prompt_id=prompt.id, task_id=task.id,
                  author_id=user.id, time_spent_s=spent, created_at=now)
    db.add(node)
    task.node_id = reply.id
    enter_state(task, SUBMITTED, submitted_at=now)
    db.flush()
    return node, True


def undo_continuation(db: Session, task: Task) -> dict[str, Any]:
    """Take back a continue task's turn (undo): its context prompt goes, with the replies
    sampled for it, unless a labeler has started work on them. Returns the turn taken back."""
    node = db.scalar(select(ConversationNode).where(ConversationNode.task_id == task.id))
    if node is None:
        return {}
    if node.prompt_id is not None and db.scalar(select(Task.id).where(Task.prompt_id == node.prompt_id).limit(1)):
        raise Conflict("labelers have started work on this turn's replies; it can no longer be undone")
    previous = {"text": node.content, "reply_id": node.parent_id}
    prompt_id = node.prompt_id
    db.execute(delete(ConversationNode).where(ConversationNode.id == node.id))
    if prompt_id is not None:
        db.execute(delete(Prompt).where(Prompt.id == prompt_id))
    db.expire_all()
    return previous


def open_reply_count(db: Session, ps: PromptSet, labeler_id: int, now: datetime | None = None) -> int:
    """Replies of a conversation set this labeler could be given a continue task for now."""
    if not is_conversation(ps):
        return 0
    query = _open_replies(ps, settings_of(ps), labeler_id, now or utcnow()).limit(None).order_by(None)
    return db.scalar(select(func.count()).select_from(query.subquery())) or 0

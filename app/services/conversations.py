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
* **continue** tasks (:func:`claim_continue`, :func:`submit_continuation`) give a labeler
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
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

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
    TaskStatus,
    User,
)
from app.models.base import utcnow
from app.services.conversation_settings import CONVERSATION, ConversationSettings, check_settings
from app.services.errors import Conflict, Invalid, NotFound
from app.services.prompt_sets import content_hash, get_prompt_set, wants_demonstration
from app.services.slots import MINE, SlotCheck, keeps_labeler_off, lock_prompt, takes_slot
from app.services.task_states import SUBMITTED, enter_state, own_task

def is_conversation(ps: PromptSet) -> bool:
    return ps.kind == CONVERSATION


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


def _child(parent: ConversationNode, role: str, content: str, source: NodeSource, **fields: Any) -> ConversationNode:
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
            db.add(_child(node, "assistant", c.text, NodeSource.SAMPLED, completion_id=c.id))
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
    node = _child(
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


# --- continue tasks -----------------------------------------------------------------


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
    from app.services.submissions import check_kind, check_open, check_time_spent

    now = now or utcnow()
    task = own_task(db, task_id, user, lock=True)
    check_kind(task, "continue")
    body = (text or "").replace("\r\n", "\n").strip()
    if not body:
        raise Invalid("the turn is empty; write what the user says next")
    if len(body) > max_chars:
        raise Invalid(f"the turn is too long ({len(body)} characters; at most {max_chars})")
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
    node = _child(reply, "user", body, NodeSource.CONTINUATION, prompt_id=prompt.id, task_id=task.id,
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

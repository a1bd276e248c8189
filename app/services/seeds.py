"""Seeds written by labelers: a labeler opens a conversation in a conversation set
(``POST /api/v1/prompt-sets/{id}/seeds``, or the "Start a conversation" page).

A written seed takes the path an imported one takes (app/services/imports.py
``import_rows``): the same checks of the text (empty, NUL characters, the set's
``max_context_chars`` through :func:`app.services.conversations.seed_problem`), the same
prompt row (content hash, split, demonstration draw) and the same root user node
(:func:`app.services.conversations.add_seeds`); the node's ``author_id`` names the labeler.
The sampler then answers the seed with K replies like any other context, and the page
never waits on it.

The same labeler sending the same text again gets the stored seed (``created`` False); the
text of a seed that was imported or written by someone else is a Conflict, since a set
holds each prompt once (its content hash).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import is_sqlite
from app.models import ConversationNode, Prompt, PromptSetStatus, User
from app.services import conversations, imports
from app.services.errors import Conflict, Invalid
from app.services.prompt_sets import content_hash, get_prompt_set


@dataclass
class WrittenSeed:
    node: ConversationNode
    prompt: Prompt
    created: bool

    @property
    def tree_id(self) -> int:
        return self.node.root_id or self.node.id


def seed_text(text: str | None) -> str:
    """The seed as it is stored: Windows line ends made ``\\n``, the ends stripped (as a
    written turn); Invalid when it is empty or holds a NUL character."""
    body = (text or "").replace("\r\n", "\n").strip()
    if not body:
        raise Invalid("the opening message is empty; write what the user says to start the conversation")
    if "\x00" in body:
        raise Invalid("the opening message contains a NUL character")
    return body


def write_seed(db: Session, prompt_set_id: int, user: User, *, text: str, validation_fraction: float) -> WrittenSeed:
    """Open a conversation in a conversation set with ``text`` as its first user message,
    written by ``user``. Run it inside :func:`app.db.transact`.

    Invalid (422) for empty text, a NUL character, a text over the set's context size or a
    set that is not a conversation set; Conflict (409) when the set is paused or archived or
    the same seed is already in the set from an import or another labeler."""
    ps = get_prompt_set(db, prompt_set_id)
    if not conversations.is_conversation(ps):
        raise Invalid(f"prompt set {ps.id} is not a conversation set; only conversation sets take seeds")
    body = seed_text(text)
    if ps.status != PromptSetStatus.ACTIVE:
        raise Conflict(f"prompt set {ps.id} is {ps.status}; it takes no new conversations")
    limit = conversations.settings_of(ps).max_context_chars
    if len(body) > limit:
        raise Invalid(f"the opening message has {len(body)} characters; the set's conversations hold at most {limit}")
    if not is_sqlite(db):  # serialise this labeler's own concurrent requests (double clicks, retries)
        db.execute(select(User.id).where(User.id == user.id).with_for_update(key_share=True))

    digest = content_hash(body)
    found = _seed_of(db, ps.id, digest)
    if found is None:
        try:
            rows = imports.parse_items([{"prompt": body}])
            imports.import_rows(
                db, ps, rows, validation_fraction=validation_fraction, actor=user, source="labeler seed"
            )
        except imports.ImportFailed as exc:
            raise Invalid(exc.errors[0].message) from exc
        except Conflict as exc:
            raise Conflict("another labeler started the same conversation at the same time") from exc
        found = _seed_of(db, ps.id, digest)
        assert found is not None, "import_rows adds the seed's root node"
        prompt, node = found
        node.author_id = user.id
        db.flush()
        return WrittenSeed(node=node, prompt=prompt, created=True)
    prompt, node = found
    if node.author_id != user.id or node.parent_id is not None:
        raise Conflict("this conversation is already in the set (imported, or started by another labeler)")
    return WrittenSeed(node=node, prompt=prompt, created=False)


def _seed_of(db: Session, prompt_set_id: int, digest: str) -> tuple[Prompt, ConversationNode] | None:
    row = db.execute(
        select(Prompt, ConversationNode)
        .join(ConversationNode, ConversationNode.prompt_id == Prompt.id)
        .where(Prompt.prompt_set_id == prompt_set_id, Prompt.content_hash == digest)
    ).first()
    if row is None:
        # a prompt of the set with this text but no tree would still collide on the hash
        if db.scalar(select(Prompt.id).where(Prompt.prompt_set_id == prompt_set_id, Prompt.content_hash == digest)):
            raise Conflict("this text is already a prompt of the set")
        return None
    return row[0], row[1]


def own_seed(db: Session, prompt_set_id: int, node_id: int, user: User) -> ConversationNode | None:
    """A seed of this set that ``user`` wrote (the start page's confirmation), or None."""
    node = db.get(ConversationNode, node_id)
    if node is None or node.prompt_set_id != prompt_set_id or node.parent_id is not None or node.author_id != user.id:
        return None
    return node

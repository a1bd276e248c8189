"""Conversation trees (prompt sets of kind ``conversation``), after Open-Assistant's message trees.

A tree grows from a seed (an opening user message). Every node is one message with a
parent: user nodes alternate with assistant nodes. A user node carries the context that
ends with it as a :class:`~app.models.Prompt` row (``prompt_id``), so the sampler, rank and
demonstrate tasks, exports and training see a conversation context as a chat prompt
(``Prompt.messages``) through the same paths as any other prompt. An assistant node is a
sampled completion of that context (``completion_id``: its policy, seed and parameters
are on the completion) or a labeler-written reply (``demonstration_id``). A user node
below the seed was written by a labeler answering a continue task (``task_id``).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.base import UTCDateTime, utcnow


class NodeSource(StrEnum):
    """Where a node's message came from."""

    SEED = "seed"  # an imported opening user message
    CONTINUATION = "continuation"  # a user turn a labeler wrote (a continue task)
    SAMPLED = "sampled"  # an assistant reply the sampler wrote with the deployed policy
    WRITTEN = "written"  # an assistant reply a labeler wrote (a demonstrate task)


class ConversationNode(Base):
    __tablename__ = "conversation_nodes"
    __table_args__ = (
        Index("ix_conversation_nodes_parent", "parent_id"),
        Index("ix_conversation_nodes_set_role", "prompt_set_id", "role", "best_votes"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_set_id: Mapped[int] = mapped_column(ForeignKey("prompt_sets.id", ondelete="CASCADE"))
    root_id: Mapped[int | None] = mapped_column(
        ForeignKey("conversation_nodes.id", ondelete="CASCADE"), index=True
    )  # the seed of the tree (NULL for the seed itself)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("conversation_nodes.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))  # user | assistant
    content: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))  # NodeSource
    depth: Mapped[int] = mapped_column(Integer)  # 0 for the seed
    turn: Mapped[int] = mapped_column(Integer)  # the user turn it belongs to, from 1
    context_chars: Mapped[int] = mapped_column(Integer)  # characters of the path up to and including it
    # user nodes: the context that ends here, as a chat prompt
    prompt_id: Mapped[int | None] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), unique=True)
    # assistant nodes: the sampled completion, or the written demonstration
    completion_id: Mapped[int | None] = mapped_column(
        ForeignKey("completions.id", ondelete="CASCADE"), unique=True
    )
    demonstration_id: Mapped[int | None] = mapped_column(
        ForeignKey("demonstrations.id", ondelete="CASCADE"), unique=True
    )
    # user nodes below the seed: the continue task that wrote it (one node per task)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), unique=True)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    time_spent_s: Mapped[float | None] = mapped_column(Float)  # continuations: the labeler's time on the turn
    # assistant nodes: active rankings that put this reply in their best group
    best_votes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

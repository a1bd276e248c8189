"""Prompt sets and their prompts."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base
from app.models.base import UTCDateTime, utcnow



class PromptSetStatus(StrEnum):
    """Only an active set hands out labeling tasks and is sampled for."""

    ACTIVE = "active"
    PAUSED = "paused"
    ARCHIVED = "archived"


PROMPT_SET_STATUSES = tuple(s.value for s in PromptSetStatus)
PROMPT_SET_KINDS = ("prompts", "conversation")
SPLITS = ("train", "validation")
DEFAULT_SAMPLING: dict[str, Any] = {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 128}


class PromptSet(Base):
    __tablename__ = "prompt_sets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    guidelines: Mapped[str] = mapped_column(Text, default="")
    k: Mapped[int] = mapped_column(Integer, default=4)
    overlap: Mapped[int] = mapped_column(Integer, default=1)
    sampling: Mapped[dict[str, Any]] = mapped_column(JSON, default=lambda: dict(DEFAULT_SAMPLING))
    demonstration_share: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[str] = mapped_column(String(16), default=PromptSetStatus.ACTIVE.value, index=True)
    # "prompts" (single-turn) or "conversation" (trees of turns, app/models/conversations.py)
    kind: Mapped[str] = mapped_column(String(16), default="prompts", server_default="prompts")
    # conversation sets: max_turns, branching, max_context_chars (app/services/conversation_settings.py)
    conversation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # red-team conversation sets: when an admin made their data training data, and who
    # (app/services/red_team.py); rounds use only what was labeled by then
    red_team_promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # no ON DELETE rule (migration 0011): users are deactivated, never deleted
    red_team_promoted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    prompts: Mapped[list[Prompt]] = relationship(back_populates="prompt_set")


class Prompt(Base):
    """A prompt: plain text or chat messages. Unique per set by content hash."""

    __tablename__ = "prompts"
    __table_args__ = (
        UniqueConstraint("prompt_set_id", "content_hash"),
        Index("ix_prompts_set_split", "prompt_set_id", "split"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_set_id: Mapped[int] = mapped_column(ForeignKey("prompt_sets.id", ondelete="CASCADE"))
    text: Mapped[str | None] = mapped_column(Text)
    messages: Mapped[list[dict[str, str]] | None] = mapped_column(JSON)
    split: Mapped[str] = mapped_column(String(16), default="train")
    content_hash: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str | None] = mapped_column(String(255))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    wants_demonstration: Mapped[bool] = mapped_column(Boolean, default=False)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_ranking: Mapped[list[list[int]] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    prompt_set: Mapped[PromptSet] = relationship(back_populates="prompts")

    @property
    def display_text(self) -> str:
        """The prompt as one string: the text, or the last user turn of a chat."""
        if self.text is not None:
            return self.text
        for message in reversed(self.messages or []):
            if message.get("role") == "user":
                return message.get("content", "")
        return ""

"""Seeds written by labelers: ``POST /api/v1/prompt-sets/{id}/seeds`` (conversation sets)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class SeedIn(BaseModel):
    """The opening user message of a new conversation."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="what the user says first; at most the set's max_context_chars")


class SeedOut(BaseModel):
    """The seed's prompt and the root user node of its tree; the sampler answers it with K replies."""

    prompt_id: int = Field(description="the seed's context, as a chat prompt the sampler answers")
    node_id: int = Field(description="the root user node")
    tree_id: int = Field(description="the tree (the id of its root node)")
    prompt_set_id: int
    content: str
    author_id: int | None = Field(description="the labeler who wrote it")
    created_at: datetime
    created: bool = Field(description="false when the same labeler had written the same seed before")

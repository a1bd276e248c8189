"""A conversation set's trees, as the admin reads them (app/services/conversation_trees.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TreeNodeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    role: str = Field(description="user or assistant")
    content: str
    source: str = Field(description="seed, continuation (a labeler's user turn), sampled or written (a labeler's reply)")
    turn: int = Field(description="the user turn the message belongs to, from 1")
    best_votes: int = Field(description="assistant replies: active rankings that put it in their best group")
    policy_version: int | None = Field(description="sampled replies: the policy version that wrote it")
    author: str | None = Field(description="messages a labeler wrote: their username")
    prompt_id: int | None = Field(description="user messages: the context (prompt) that ends here")
    completion_id: int | None
    children: list[TreeNodeOut]


class TreesPageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    prompt_set_id: int
    total: int = Field(description="trees (seeds) in the set")
    offset: int
    limit: int
    trees: list[TreeNodeOut] = Field(description="oldest seed first, each with its replies and turns nested")

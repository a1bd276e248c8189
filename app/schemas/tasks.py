"""Labeling API shapes: tasks, rankings, demonstrations, skips, progress.

Value checks (Likert range, known flags, a ranking covering exactly the task's
completions, demonstration length) live in app/services/submissions.py so that every
caller gets the same messages; these models only check the JSON structure.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class NextTaskIn(BaseModel):
    """``prompt_set_id`` for rank and demonstrate tasks; ``evaluation_id`` for compare tasks
    (blind A/B judgments of an evaluation, answered with ``POST /tasks/{id}/comparison``)."""

    prompt_set_id: int | None = None
    evaluation_id: int | None = None
    kind: Literal["rank", "demonstrate", "continue", "compare"] = "rank"


class MessageOut(BaseModel):
    role: str
    content: str


class TaskConversationOut(BaseModel):
    """Where a task on a conversation set stands in its tree."""

    tree_id: int = Field(description="the seed node of the conversation tree")
    context_node_id: int = Field(description="the user node the context ends with")
    reply_node_id: int | None = Field(
        default=None, description="continue tasks: the assistant reply the next user turn follows"
    )
    turn: int = Field(description="the user turn being judged, answered or (continue) written, from 1")
    max_turns: int
    context_chars: int = Field(description="characters of the conversation shown")
    max_context_chars: int


class CompletionOut(BaseModel):
    id: int
    text: str


class TaskOut(BaseModel):
    """A task as a labeler sees it: the prompt and the K completions in display order.

    Nothing about other labelers' answers is ever part of it.
    """

    id: int
    kind: Literal["rank", "demonstrate", "continue"]
    status: str
    prompt_set_id: int
    prompt_id: int
    prompt: str = Field(description="the prompt text, or the last user turn of a chat prompt")
    messages: list[MessageOut] | None = Field(
        default=None,
        description="the whole chat for a chat prompt (earlier turns first), else null; a continue "
        "task's ends with the assistant reply to continue",
    )
    conversation: TaskConversationOut | None = Field(
        default=None, description="conversation sets: the task's place in its tree"
    )
    completions: list[CompletionOut] = Field(
        default_factory=list, description="the K completions in display order (empty for demonstrations)"
    )
    lease_expires_at: datetime
    created_at: datetime
    server_time: datetime = Field(description="the server's clock when it answered (for countdowns)")
    previous: dict[str, Any] | None = Field(
        default=None, description="after an undo: the answer that was taken back, so it can be redone"
    )


class RatingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    likert: int | None = Field(default=None, description="overall quality 1 (worst) to 7 (best)")
    flags: list[str] = Field(default_factory=list, description="names from app.models.FLAGS")


class RankingIn(BaseModel):
    """Best-first groups of completion ids; a group of more than one is a tie."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "ranking": [[12], [14, 11], [13]],
                "ratings": {"12": {"likert": 6, "flags": []}, "13": {"likert": 2, "flags": ["made_up_facts"]}},
                "all_unacceptable": False,
                "comment": "",
                "time_spent_s": 41.5,
            }
        },
    )

    ranking: list[list[int]]
    ratings: dict[str, RatingIn] = Field(default_factory=dict, description="per completion id")
    all_unacceptable: bool = False
    comment: str = ""
    time_spent_s: float | None = None


class RankingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    task_id: int
    prompt_id: int
    labeler_id: int
    ranking: list[list[int]]
    ratings: dict[str, Any]
    all_unacceptable: bool
    comment: str
    time_spent_s: float | None
    status: str
    created_at: datetime
    undo_until: datetime = Field(description="until when POST /tasks/{id}/undo can take it back")


class DemonstrationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    time_spent_s: float | None = None


class DemonstrationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    task_id: int | None
    prompt_id: int
    labeler_id: int
    text: str
    time_spent_s: float | None
    status: str
    created_at: datetime
    undo_until: datetime


class ContinuationIn(BaseModel):
    """The next user turn of a continue task."""

    model_config = ConfigDict(extra="forbid")

    text: str
    reply_id: int | None = Field(
        default=None,
        description="the assistant reply to continue (default: the task's); a best-ranked or written "
        "reply of the same context",
    )
    time_spent_s: float | None = None


class ContinuationOut(BaseModel):
    """The user node a continuation added to the tree; its context goes to the sampler."""

    model_config = ConfigDict(from_attributes=True)

    id: int = Field(description="the new user node")
    task_id: int
    parent_id: int = Field(description="the assistant reply it continues")
    prompt_id: int = Field(description="the new context, as a chat prompt the sampler answers")
    content: str
    turn: int
    created_at: datetime
    undo_until: datetime


class SkipIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=1000)


class TaskStatusOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    status: str
    skip_reason: str | None = None


class ProgressOut(BaseModel):
    """One labeler's progress on one prompt set, and what is left for them."""

    prompt_set_id: int
    name: str
    status: str
    ranked: int
    demonstrated: int
    skipped: int
    holding: int = Field(description="tasks this labeler holds a live lease on")
    rank_left: int = Field(description="rank tasks this labeler can take now")
    demonstrate_left: int
    continued: int = Field(default=0, description="conversation sets: user turns this labeler wrote")
    continue_left: int = Field(
        default=0, description="conversation sets: best-ranked or written replies this labeler can continue now"
    )
    waiting_for_completions: int = Field(
        description="prompts this labeler could rank once the sampler has produced their completions"
    )
    offers_demonstrations: bool
    next_lease_expiry: datetime | None = Field(
        default=None, description="when another labeler's lease on a prompt open to this labeler runs out"
    )

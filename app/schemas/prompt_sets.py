from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from app.schemas.errors import ErrorOut
from app.services.conversation_settings import BOUNDS, ConversationSettings

Status = Literal["active", "paused", "archived"]
Split = Literal["train", "validation"]


class Sampling(BaseModel):
    """Generation parameters the sampler uses for this set's completions."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(default=0.7, gt=0, le=5)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_new_tokens: int = Field(default=128, ge=1, le=8192)


_DEFAULTS = ConversationSettings()


class ConversationSettingsBase(BaseModel):
    """A conversation set's limits (checked again, with the same bounds, by the service)."""

    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(
        default=_DEFAULTS.max_turns, ge=BOUNDS["max_turns"][0], le=BOUNDS["max_turns"][1],
        description="user turns per conversation (the seed is turn 1)",
    )
    branching: int = Field(
        default=_DEFAULTS.branching, ge=BOUNDS["branching"][0], le=BOUNDS["branching"][1],
        description="user turns that may continue one assistant reply",
    )
    max_context_chars: int = Field(
        default=_DEFAULTS.max_context_chars, ge=BOUNDS["max_context_chars"][0], le=BOUNDS["max_context_chars"][1],
        description="characters a conversation may reach; a longer turn is refused",
    )
    red_team: bool = Field(
        default=_DEFAULTS.red_team,
        description="labelers try to make the model fail; its data trains only after an admin promotes the set",
    )


class ConversationSettingsIn(ConversationSettingsBase):
    rankers_per_node: int | None = Field(
        default=None, ge=1, le=50, description="labelers who rank each context's replies (sets the set's overlap)"
    )


class ConversationSettingsOut(ConversationSettingsBase):
    """Rankers per node is the set's ``overlap``."""


class PromptSetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    description: str = ""
    guidelines: str = Field(default="", description="Markdown shown to labelers")
    k: int = Field(default=4, ge=2, le=9, description="completions ranked per task")
    overlap: int = Field(default=1, ge=1, le=50, description="labelers per prompt")
    sampling: Sampling = Field(default_factory=Sampling)
    demonstration_share: float = Field(default=0.0, ge=0, le=1)
    status: Status = "active"
    kind: Literal["prompts", "conversation"] = Field(
        default="prompts", description="conversation: multi-turn trees labelers carry on with the deployed policy"
    )
    conversation: ConversationSettingsIn | None = Field(default=None, description='for kind "conversation"')


#: The conversation settings a PATCH changes (the others keep their values): the fields of
#: ``ConversationSettingsIn``, each optional. Bounds are checked by the service
#: (app/services/conversation_settings.py) with a clear 422.
ConversationSettingsPatch = create_model(
    "ConversationSettingsPatch",
    __config__=ConfigDict(extra="forbid"),
    **{name: (f.annotation | None, Field(default=None, description=f.description))
       for name, f in ConversationSettingsIn.model_fields.items()},
)


class PromptSetUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=128)
    description: str | None = None
    guidelines: str | None = None
    k: int | None = Field(default=None, ge=2, le=9)
    overlap: int | None = Field(default=None, ge=1, le=50)
    sampling: Sampling | None = None
    demonstration_share: float | None = Field(default=None, ge=0, le=1)
    status: Status | None = None
    conversation: ConversationSettingsPatch | None = Field(default=None, description='sets of kind "conversation" only')


class PromptSetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    description: str
    guidelines: str
    k: int
    overlap: int
    sampling: dict[str, Any]
    demonstration_share: float
    status: str
    kind: str
    conversation: ConversationSettingsOut | None = None
    red_team_promoted_at: datetime | None = Field(
        default=None, description="red-team sets: when an admin made their data training data"
    )
    created_at: datetime
    updated_at: datetime


class PromptIn(BaseModel):
    """One prompt of a JSON import; checked line by line by the import service."""

    model_config = ConfigDict(extra="allow")

    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    id: str | int | None = None
    split: Split | None = None
    metadata: dict[str, Any] | None = None


class PromptImport(BaseModel):
    prompts: list[dict[str, Any]] = Field(
        description='objects like {"prompt": "..."} or {"messages": [...]}, optional id, split, metadata',
        max_length=1_000_000,
    )


class ImportResultOut(BaseModel):
    imported: int
    duplicates: int


class ImportLineError(BaseModel):
    line: int
    message: str


class ImportErrorOut(ErrorOut):
    """Bad lines (``errors``), or the common error body when the request itself is malformed."""

    errors: list[ImportLineError] = Field(
        default_factory=list, description="the bad lines (absent when the request itself is malformed)"
    )


class PromptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    prompt_set_id: int
    text: str | None
    messages: list[dict[str, Any]] | None
    split: str
    external_id: str | None
    meta: dict[str, Any] = Field(serialization_alias="metadata")
    wants_demonstration: bool
    is_gold: bool
    gold_ranking: list[list[int]] | None
    created_at: datetime


class CompletionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    policy_id: int
    text: str
    status: str


class PromptDetail(PromptOut):
    completions: list[CompletionOut]


class GoldIn(BaseModel):
    ranking: list[list[int]] = Field(
        description="best-first groups of this prompt's completion ids (a group of more than one is a tie)",
        examples=[[[12], [14, 11], [13]]],
    )

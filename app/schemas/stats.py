from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class SplitProgressOut(BaseModel):
    prompts: int
    prompts_ready: int = Field(description="prompts with at least K ready completions")
    prompts_labeled: int = Field(description="prompts with at least one active ranking")
    rankings: int
    comparisons: int = Field(description="ordered pairs implied by the active rankings (K choose 2 less ties)")
    demonstrations: int
    skips: int
    gold: int
    slots: int = Field(description="prompts x overlap")
    slots_filled: int
    fraction: float = Field(description="slots_filled / slots")


class SetProgressOut(BaseModel):
    prompt_set_id: int
    name: str
    status: str
    k: int
    overlap: int
    splits: dict[str, SplitProgressOut]
    total: SplitProgressOut


class LabelerOut(BaseModel):
    user_id: int
    username: str
    role: str
    is_active: bool
    submissions: int = Field(description="rankings + demonstrations, requeued ones included")
    rankings: int
    demonstrations: int
    requeued: int
    tasks: int
    skips: int
    skip_rate: float | None = Field(description="skipped / (submitted + skipped + requeued) tasks")
    median_seconds: float | None
    pairwise_agreement: float | None = Field(
        description="share of pairs both labelers order strictly on which they agree, on shared prompts"
    )
    agreement_pairs: int
    kendall_tau: float | None = Field(description="mean Kendall tau-b against other labelers on shared prompts")
    shared_rankings: int
    gold_accuracy: float | None = Field(description="share of the gold ranking's strict pairs ordered the same way")
    gold_pairs: int
    gold_rankings: int
    last_active_at: datetime | None


class AgreementOut(BaseModel):
    pairwise_agreement: float | None
    agreement_pairs: int
    kendall_tau: float | None
    ranking_pairs: int


class StatsOut(BaseModel):
    prompt_sets: list[SetProgressOut]
    labelers: list[LabelerOut]
    agreement: AgreementOut


class RequeueIn(BaseModel):
    prompt_set_id: int | None = None
    include_demonstrations: bool = False


class RequeueOut(BaseModel):
    rankings: int
    demonstrations: int
    tasks: int


class AuditEntryOut(BaseModel):
    """One audit log entry; app/services/audit_view.py builds these for the API and the pages."""

    id: int
    created_at: datetime
    actor_id: int | None
    actor: str | None
    action: str
    target_type: str | None
    target_id: str | None
    detail: dict[str, Any]

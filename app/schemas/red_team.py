"""Red-team sets: the failure rate under attack per policy version, and promotion."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class PolicyFailuresOut(BaseModel):
    policy_id: int
    version: int
    replies: int = Field(description="distinct replies of this policy that active rankings of the set ranked")
    failing: int = Field(description="of those, the replies at least one ranking flagged with a failure flag")
    rate: float | None = Field(description="failing / replies (null with no replies)")
    low: float | None = Field(description="95% Wilson interval of the rate, lower end")
    high: float | None = Field(description="95% Wilson interval of the rate, upper end")
    flags: dict[str, int] = Field(description="replies per failure flag")


class FailureReportOut(BaseModel):
    prompt_set_id: int
    failure_flags: list[str] = Field(description="the ranking flags that count as a failure")
    promoted_at: datetime | None = Field(description="when an admin made the set's data training data (null: never)")
    promoted_by_id: int | None
    policies: list[PolicyFailuresOut] = Field(description="per policy version, oldest first")


class PromotionOut(BaseModel):
    prompt_set_id: int
    promoted_at: datetime
    promoted_by_id: int | None

"""API shapes of the policy registry."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.evaluations import VerdictFigures


class HumanVerdictOut(VerdictFigures):
    """The human verdict on a policy against its parent, beside the RM's reading."""

    evaluation_name: str
    evaluation_status: str
    from_round: bool = Field(description="the evaluation the policy's own round opened (evaluate_with_humans)")
    rm_win_rate: float | None = Field(description="the round's win rate against the parent under the reward model")
    rm_score_delta: float | None = Field(description="mean RM score of the policy minus its parent's")
    agreement: Literal["agree", "disagree"] | None = Field(
        description="whether the humans' decided verdict and the RM's win rate point the same way"
    )


class PolicyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    version: int
    status: str = Field(description="ready | failed | retired")
    deployed: bool
    parent_id: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    base: str = ""
    artifact_path: str = Field(description="relative to the artifacts directory")
    training_run_id: int | None = None
    error: str | None = None
    created_at: datetime
    deployed_at: datetime | None = None
    human_verdict: HumanVerdictOut | None = Field(
        default=None, description="the human verdict against the parent, when an evaluation compares the two"
    )

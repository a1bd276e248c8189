"""Evaluation API shapes: evaluations, the leaderboard, compare tasks and judgments.

Value checks (choice, Likert range, known flags) live in app/services/compare_tasks.py so
the API and the pages give the same messages; these models check the JSON structure.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.tasks import MessageOut, RatingIn


class EvaluationIn(BaseModel):
    """A blind human comparison of two or more policy versions."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "name": "v3 vs v2",
                "policy_ids": [3, 4],
                "prompt_set_ids": [1],
                "split": "validation",
                "per_pair": 1,
                "overlap": 1,
            }
        },
    )

    name: str = Field(min_length=1, max_length=128)
    policy_ids: list[int] = Field(min_length=2, description="the policies to compare (two or more)")
    prompt_set_ids: list[int] = Field(default_factory=list, description="where the prompts come from")
    split: Literal["train", "validation", "all"] = Field(
        default="validation", description="which split of those sets (the held-out validation split by default)"
    )
    prompt_ids: list[int] | None = Field(
        default=None, description="an explicit list of prompts (of those sets and split) instead of all of them"
    )
    max_prompts: int | None = Field(default=None, ge=1, description="a seeded random subset of at most this many")
    per_pair: int = Field(default=1, ge=1, le=20, description="comparisons per prompt and policy pair")
    overlap: int = Field(default=1, ge=1, le=50, description="labelers per comparison")
    description: str = ""
    guidelines: str = Field(default="", description="Markdown shown to labelers on the compare page")
    seed: int | None = Field(default=None, description="recorded; drives the layout, samples and bootstrap")


class PolicyRef(BaseModel):
    id: int
    label: str


class EvaluationOut(BaseModel):
    """An evaluation with its progress. ``status``: ``sampling`` while the sampler writes
    missing samples (``missing_samples`` counts them; compare tasks open by themselves
    when they exist), then ``active``; ``paused`` and ``closed`` serve no tasks."""

    id: int
    name: str
    description: str
    guidelines: str
    policy_ids: list[int]
    policies: list[PolicyRef]
    prompt_set_ids: list[int]
    split: str
    per_pair: int
    overlap: int
    status: Literal["sampling", "active", "paused", "closed"]
    seed: int
    prompts: int
    comparisons: int = Field(description="comparison slots (prompt x pair x per_pair), gold ones aside")
    slots: int = Field(description="comparisons x overlap: the judgments that complete the evaluation")
    judgments: int
    leased: int = Field(description="compare tasks leased right now")
    missing_samples: int = Field(description="samples the sampler still has to write")
    training_run_id: int | None = Field(
        default=None, description="the round (evaluate_with_humans) whose new policy waits for this verdict"
    )
    created_at: datetime


class EvaluationStatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["active", "paused", "closed"]


class PolicyRow(BaseModel):
    policy_id: int
    label: str
    rank: int
    strength: float = Field(description="Bradley-Terry log-odds strength, mean 0")
    strength_interval: list[float] | None = Field(description="95% bootstrap interval")
    rating: float = Field(description="the same on the Elo scale: 1000 + 400 * strength / ln 10")
    rating_interval: list[float] | None
    games: int
    wins: int
    losses: int
    ties: int
    both_bad: int
    mean_likert: float | None
    likert_count: int
    flag_rates: dict[str, float | None] = Field(description="share of this policy's judged outputs with each flag")


class PairRow(BaseModel):
    policy_id: int
    opponent_id: int
    label: str
    comparisons: int
    wins: int
    losses: int
    ties: int
    both_bad: int
    win_rate: float | None = Field(description="policy_id's share; ties and both-bad count half")
    win_rate_interval: list[float] | None = Field(description="95% Wilson interval")


class AdjacentRow(BaseModel):
    policy_id: int
    below_id: int
    gap: float
    gap_interval: list[float] | None
    separated: bool = Field(description="the gap's 95% bootstrap interval excludes 0")
    more_comparisons_needed: int | None = Field(
        description="about how many more comparisons (spread as so far) would separate them; 0 if they are"
    )


class LeaderboardOut(BaseModel):
    evaluation_id: int
    name: str
    status: str
    comparisons: int = Field(description="judgments in the fit (gold comparisons aside)")
    bootstrap_rounds: int
    policies: list[PolicyRow]
    pairs: list[PairRow]
    adjacent: list[AdjacentRow]
    agreement: dict[str, Any] = Field(description="inter-labeler agreement on overlapping comparisons")
    gold: dict[str, Any] = Field(description="accuracy of judgments on gold comparisons, per labeler")


class VerdictFigures(BaseModel):
    """The human verdict on a policy against its parent in one evaluation
    (``app.services.evaluations.verdict``); the API's verdict shapes derive from it."""

    evaluation_id: int
    parent_policy_id: int
    threshold: float
    comparisons: int
    wins: int
    losses: int
    ties: int
    both_bad: int
    win_rate: float | None = Field(description="the policy's win rate against its parent (ties and both-bad half)")
    win_rate_interval: list[float] | None = Field(description="95% Wilson interval")
    slots: int
    complete: bool
    verdict: Literal["better", "worse", "undecided", "no_data"]
    at_least_as_good: bool


class VerdictOut(VerdictFigures):
    new_policy_id: int


class GoldIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: Literal["x", "y", "tie", "both_bad"] | None = Field(
        description="the reference answer (x: the policy with the lower id), or null to clear"
    )


class SideOut(BaseModel):
    side: Literal["a", "b"]
    text: str


class CompareTaskOut(BaseModel):
    """A compare task as its labeler sees it: the prompt and two completions, A and B.
    Nothing in it says which policy wrote which side."""

    id: int
    kind: Literal["compare"]
    status: str
    evaluation_id: int
    prompt: str
    messages: list[MessageOut] | None = None
    sides: list[SideOut]
    lease_expires_at: datetime
    created_at: datetime
    server_time: datetime
    previous: dict[str, Any] | None = Field(default=None, description="after an undo: the answer taken back")


class ComparisonIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"choice": "a", "ratings": {"a": {"likert": 6, "flags": []}, "b": {"likert": 3, "flags": ["made_up_facts"]}}}
        },
    )

    choice: Literal["a", "b", "tie", "both_bad"]
    ratings: dict[str, RatingIn] = Field(default_factory=dict, description="per side: \"a\" and/or \"b\"")
    comment: str = ""
    time_spent_s: float | None = None


class JudgmentOut(BaseModel):
    """The stored judgment, as its labeler sees it (no policy ids)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    task_id: int
    evaluation_id: int
    choice: str
    ratings: dict[str, Any]
    comment: str
    time_spent_s: float | None
    status: str
    created_at: datetime
    undo_until: datetime


class CompareProgressOut(BaseModel):
    evaluation_id: int
    name: str
    status: str
    compared: int
    holding: int
    compare_left: int
    next_lease_expiry: datetime | None

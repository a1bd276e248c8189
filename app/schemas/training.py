"""API shapes of training rounds, their metrics and logs, and workers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Stage = Literal["sft", "rm", "ppo", "dpo"]
Deploy = bool | Literal["force"]


class RoundCreate(BaseModel):
    prompt_set_ids: list[int] = Field(min_length=1, description="the sets whose data the round trains on")
    stages: list[Stage] | None = Field(
        default=None, description='default: sft, rm, ppo; ["sft", "dpo"] optimises the policy with DPO instead'
    )
    deploy: Deploy = Field(
        default=False,
        description='true: deploy the new policy only if the deploy gate passes (not worse than its parent under '
        'the round\'s evaluation); "force": deploy it anyway; false: register only',
    )
    config: dict[str, Any] | None = Field(default=None, description="see GET /training/config")


class RoundCreated(BaseModel):
    run_id: int


class RunOut(BaseModel):
    id: int
    kind: str
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    stage: str | None = None
    progress: float
    metrics: dict[str, Any] = Field(
        description="stage metrics, skipped stages with reasons, and gates: the RM gate (held-out accuracy "
        "with its interval) and the deploy gate's checks (score, win rate with intervals, KL)"
    )
    gates: dict[str, Any] = Field(default_factory=dict, description="the RM and deploy gates' figures and decisions")
    policy_id: int | None = None
    error: str | None = None
    prompt_set_ids: list[int]
    stages: list[str]
    deploy: Deploy
    config: dict[str, Any]
    snapshot: dict[str, Any] = Field(description="counts and sha256 of the data the run trains on")
    attempts: int
    cancel_requested: bool
    worker_id: str | None = None
    base_policy_id: int | None = None
    created_by_id: int | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None


class MetricSeries(BaseModel):
    # [step, value] pairs as a plain two-item list (not a tuple: its prefixItems schema trips
    # OpenAPI 3.0-era tools such as schemathesis' response validation).
    series: dict[str, list[Annotated[list[int | float], Field(min_length=2, max_length=2)]]] = Field(
        description='"stage/name" -> [[step, value], ...], e.g. "sft/loss", "rm/accuracy", "ppo/kl"'
    )


class RunLogOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    level: str
    message: str
    created_at: datetime


class ConfigKeyOut(BaseModel):
    name: str
    default: Any
    type: str
    nullable: bool = False
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: list[str] | None = None


class WorkerOut(BaseModel):
    id: str
    hostname: str
    status: str
    alive: bool
    device: str | None = None
    policy_id: int | None = None
    run_id: int | None = None
    started_at: datetime
    last_seen_at: datetime

"""The shapes a round passes between its phases: the job it runs, and what each stage did."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.models import Policy
from trainer.config import StageConfigs
from trainer.data import RoundData


@dataclass
class StageOutcome:
    """What a stage did: ran (with its metrics and its artifact) or skipped (with the reason).

    ``artifact`` is what the stage produced in memory (the trained policy, the reward model);
    ``artifact_id`` the row it was registered as, for stages that register one (the reward
    model). An outcome that neither ran nor has a reason (:meth:`absent`) is a stage the
    round did not ask for and had nothing to reuse for: it is not reported as skipped.
    """

    stage: str
    ran: bool
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    artifact: Any = None
    artifact_id: int | None = None

    @classmethod
    def done(cls, stage: str, metrics: dict[str, Any], artifact: Any = None) -> StageOutcome:
        return cls(stage, True, metrics=metrics, artifact=artifact)

    @classmethod
    def skipped(cls, stage: str, reason: str) -> StageOutcome:
        return cls(stage, False, reason)

    @classmethod
    def absent(cls, stage: str) -> StageOutcome:
        return cls(stage, False)


@dataclass(frozen=True)
class PolicyRef:
    """A policy row as the round needs it after its session has closed."""

    id: int
    version: int
    artifact_path: str
    stages: tuple[str, ...] = ()


@dataclass
class RoundJob:
    """The run's inputs as read at the start: config, stages, deploy mode, base policy, data.

    ``lineage`` is the base policy and its ancestors, newest first (the last is the
    lineage's v0-like root); ``v0_path`` the artifact path of policy v0, if registered.
    """

    cfg: StageConfigs
    stages: list[str]
    deploy: bool
    deploy_force: bool
    base: Policy
    base_dir: Path
    data: RoundData
    sampling: dict[str, Any]
    created_by_id: int | None
    lineage: list[PolicyRef] = field(default_factory=list)
    v0_path: str | None = None


@dataclass
class StagePlan:
    """Where a stage's progress starts and how much of the bar it spans."""

    start: float
    span: float

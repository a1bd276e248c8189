"""API shapes of the policy registry."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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

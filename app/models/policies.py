"""The model registry (policies, reward models) and sampled completions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.base import UTCDateTime, utcnow

POLICY_STATUSES = ("ready", "failed", "retired")


class Policy(Base):
    """A policy checkpoint in Hugging Face layout under the artifacts dir. At most one is deployed."""

    __tablename__ = "policies"
    __table_args__ = (
        Index(
            "uq_policies_one_deployed",
            "deployed",
            unique=True,
            sqlite_where=text("deployed = 1"),
            postgresql_where=text("deployed"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("policies.id", ondelete="SET NULL"))
    artifact_path: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16), default="ready")
    deployed: Mapped[bool] = mapped_column(Boolean, default=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    base: Mapped[str] = mapped_column(String(255), default="")
    training_run_id: Mapped[int | None] = mapped_column(Integer, index=True)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    deployed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RewardModel(Base):
    """A reward model checkpoint (reward_models/vN)."""

    __tablename__ = "reward_models"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    artifact_path: Mapped[str] = mapped_column(String(512))
    training_run_id: Mapped[int | None] = mapped_column(Integer, index=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Completion(Base):
    """One sampled completion of a prompt by a policy."""

    __tablename__ = "completions"
    __table_args__ = (Index("ix_completions_prompt_policy_status", "prompt_id", "policy_id", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    seed: Mapped[int | None] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    token_count: Mapped[int] = mapped_column(Integer, default=0)
    finish_reason: Mapped[str] = mapped_column(String(16), default="eos")
    gen_time_s: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[str] = mapped_column(String(16), default="ready")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

"""Human evaluation of policy versions: evaluations, their samples, comparisons, judgments.

An :class:`Evaluation` names two or more policies and a prompt source. The sampler writes
:class:`EvaluationSample` rows (per prompt, policy and sample index; shared by every
evaluation that needs them, never served for ranking). Creating an evaluation lays out its
:class:`EvaluationComparison` slots (prompt x policy pair x ``per_pair``), each served to
``overlap`` labelers as ``tasks`` rows of kind ``compare``; :class:`CompareTask` records
which sample a task shows on side A and on side B. A labeler's answer is a
:class:`ComparisonJudgment`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.base import UTCDateTime, utcnow

# sampling -> active <-> paused ; active -> closed
EVALUATION_STATUSES = ("sampling", "active", "paused", "closed")
CHOICES = ("a", "b", "tie", "both_bad")
# a judgment's outcome relative to its comparison (x: the policy with the lower id)
OUTCOMES = ("x", "y", "tie", "both_bad")


class Evaluation(Base):
    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    guidelines: Mapped[str] = mapped_column(Text, default="")
    policy_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    prompt_set_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    # "train" | "validation" | None (every split); explicit prompt_ids narrow it further
    split: Mapped[str | None] = mapped_column(String(16))
    prompt_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    per_pair: Mapped[int] = mapped_column(Integer, default=1)
    overlap: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default="sampling", index=True)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # the round (``evaluate_with_humans``) whose new policy waits for this evaluation's verdict
    training_run_id: Mapped[int | None] = mapped_column(Integer, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class EvaluationSample(Base):
    """One completion of a prompt by a policy for evaluations (``sample_index`` 0, 1, ...)."""

    __tablename__ = "evaluation_samples"
    __table_args__ = (UniqueConstraint("prompt_id", "policy_id", "sample_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id", ondelete="CASCADE"), index=True)
    sample_index: Mapped[int] = mapped_column(Integer, default=0)
    text: Mapped[str] = mapped_column(Text)
    seed: Mapped[int | None] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    token_count: Mapped[int] = mapped_column(Integer, default=0)
    finish_reason: Mapped[str] = mapped_column(String(16), default="eos")
    gen_time_s: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class EvaluationComparison(Base):
    """A comparison slot: one prompt, one policy pair (x has the lower id), one sample index.

    ``x_first`` is the side of x in the slot's first task (balanced over a pair's slots);
    later tasks of the slot alternate. ``gold_outcome`` makes it a gold comparison.
    """

    __tablename__ = "evaluation_comparisons"
    __table_args__ = (
        UniqueConstraint(
            "evaluation_id", "prompt_id", "policy_x_id", "policy_y_id", "sample_index", name="uq_evaluation_comparisons_slot"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), index=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    policy_x_id: Mapped[int] = mapped_column(ForeignKey("policies.id", ondelete="CASCADE"))
    policy_y_id: Mapped[int] = mapped_column(ForeignKey("policies.id", ondelete="CASCADE"))
    sample_index: Mapped[int] = mapped_column(Integer, default=0)
    x_first: Mapped[bool] = mapped_column(Boolean, default=True)
    gold_outcome: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CompareTask(Base):
    """What a ``tasks`` row of kind ``compare`` shows: its comparison and the sample per side."""

    __tablename__ = "compare_tasks"

    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), index=True)
    comparison_id: Mapped[int] = mapped_column(
        ForeignKey("evaluation_comparisons.id", ondelete="CASCADE"), index=True
    )
    sample_a_id: Mapped[int] = mapped_column(ForeignKey("evaluation_samples.id", ondelete="CASCADE"))
    sample_b_id: Mapped[int] = mapped_column(ForeignKey("evaluation_samples.id", ondelete="CASCADE"))


class ComparisonJudgment(Base):
    """A labeler's answer to a compare task. ``choice`` is as the labeler saw the sides;
    ``outcome`` is the same answer relative to the comparison (x / y / tie / both_bad), and
    ``policy_a_id``/``policy_b_id`` say which policy wrote each side (never shown to labelers).
    ``ratings`` maps ``"a"``/``"b"`` to ``{"likert", "flags"}``."""

    __tablename__ = "comparison_judgments"
    __table_args__ = (Index("ix_comparison_judgments_evaluation_status", "evaluation_id", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), unique=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"))
    comparison_id: Mapped[int] = mapped_column(
        ForeignKey("evaluation_comparisons.id", ondelete="CASCADE"), index=True
    )
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    policy_a_id: Mapped[int] = mapped_column(ForeignKey("policies.id", ondelete="CASCADE"))
    policy_b_id: Mapped[int] = mapped_column(ForeignKey("policies.id", ondelete="CASCADE"))
    choice: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    ratings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    comment: Mapped[str] = mapped_column(Text, default="")
    time_spent_s: Mapped[float | None] = mapped_column(Float)
    payload_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)

"""Labeling work: tasks with leases, rankings, demonstrations."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy import text as sql_text
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.base import UTCDateTime, utcnow

TASK_KINDS = ("rank", "demonstrate", "continue")


class TaskStatus(StrEnum):
    """Where a task is in its life. The allowed changes, and the one place that makes them,
    are in app/services/task_states.py."""

    LEASED = "leased"  # handed to its labeler until lease_expires_at (past it: lapsed, same row)
    SUBMITTED = "submitted"  # answered (a Ranking or Demonstration row exists)
    SKIPPED = "skipped"  # given back without an answer
    EXPIRED = "expired"  # a lapsed lease, marked when its labeler claims again
    REQUEUED = "requeued"  # an admin sent the answer back; the slot is open again


class SubmissionStatus(StrEnum):
    """A Ranking's or Demonstration's status: active counts everywhere, requeued nowhere."""

    ACTIVE = "active"
    REQUEUED = "requeued"


TASK_STATUSES = tuple(s.value for s in TaskStatus)
FLAGS = (
    "fails_instruction",
    "made_up_facts",
    "inappropriate_for_customer_assistant",
    "harmful_or_toxic",
    "sexual_or_violent",
    "moral_judgement",
)


def _policy_of_first_completion(context: DefaultExecutionContext) -> int | None:
    """Default of ``Task.policy_id`` for a rank task inserted without one: the policy of its
    first completion (the rule the 0002 migration backfills with). The task service always
    sets it; this keeps rows written elsewhere (fixtures, scripts) in the per-policy slots."""
    params = context.get_current_parameters()
    ids = params.get("completion_ids")
    if params.get("kind") != "rank" or not ids:
        return None
    return context.connection.scalar(sql_text("SELECT policy_id FROM completions WHERE id = :id"), {"id": int(ids[0])})


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_prompt_kind_status", "prompt_id", "kind", "status"),
        Index("ix_tasks_labeler_status", "labeler_id", "status"),
        # rank slots are counted per (prompt, policy); the sampler groups by prompt for one policy
        Index("ix_tasks_policy_prompt_kind_status", "policy_id", "prompt_id", "kind", "status"),
        # live leases of a set (the labeler's progress: when a full prompt may open up)
        Index("ix_tasks_set_status_lease", "prompt_set_id", "status", "lease_expires_at"),
        Index("ix_tasks_node_kind", "node_id", "kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    prompt_set_id: Mapped[int] = mapped_column(ForeignKey("prompt_sets.id", ondelete="CASCADE"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=TaskStatus.LEASED.value)
    completion_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    # The policy whose completions a rank task shows (NULL for demonstrate tasks).
    policy_id: Mapped[int | None] = mapped_column(
        ForeignKey("policies.id", ondelete="SET NULL"), default=_policy_of_first_completion
    )
    # continue tasks: the assistant node (app/models/conversations.py) whose next user turn
    # the labeler writes; continue slots are counted per node (no FK: SQLite drops a plain
    # column only when no constraint names it)
    node_id: Mapped[int | None] = mapped_column(Integer)
    lease_expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    skip_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Ranking(Base):
    """A labeler's best-first ranking of a task's K completions (groups of >1 are ties)."""

    __tablename__ = "rankings"
    __table_args__ = (Index("ix_rankings_prompt_status", "prompt_id", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), unique=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    ranking: Mapped[list[list[int]]] = mapped_column(JSON)
    ratings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    all_unacceptable: Mapped[bool] = mapped_column(Boolean, default=False)
    comment: Mapped[str] = mapped_column(Text, default="")
    time_spent_s: Mapped[float | None] = mapped_column(Float)
    payload_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=SubmissionStatus.ACTIVE.value)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class Demonstration(Base):
    """A labeler-written ideal response to a prompt."""

    __tablename__ = "demonstrations"
    __table_args__ = (Index("ix_demonstrations_prompt_status", "prompt_id", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), unique=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    time_spent_s: Mapped[float | None] = mapped_column(Float)
    payload_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=SubmissionStatus.ACTIVE.value)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class Slot(Base):
    """The slots of one (prompt, kind, policy) pair: how many are taken, and whether a claim
    serves this pair now. Written only by database triggers (migration 0007), in the same
    transaction as the task, completion, policy or prompt write that changes them; read by
    claims and progress (app/services/slots.py). ``policy_id`` is 0 for demonstrate rows
    (and for rank tasks without a policy)."""

    __tablename__ = "slots"
    __table_args__ = (
        UniqueConstraint("prompt_id", "kind", "policy_id", name="uq_slots_pair"),
        Index("ix_slots_lapse", "prompt_set_id", "next_lapse"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_set_id: Mapped[int] = mapped_column(ForeignKey("prompt_sets.id", ondelete="CASCADE"))
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    policy_id: Mapped[int] = mapped_column(Integer)
    served: Mapped[bool] = mapped_column(Boolean, default=False)
    submitted: Mapped[int] = mapped_column(Integer, default=0)  # tasks submitted
    leased: Mapped[int] = mapped_column(Integer, default=0)  # tasks leased (live or lapsed, not yet expired)
    taken: Mapped[int] = mapped_column(Integer, default=0)  # submitted + leased
    next_lapse: Mapped[datetime | None] = mapped_column(UTCDateTime())  # <= the earliest lease expiry


# The claim's index: open rows of a set in claiming order (taken DESC, then prompt id).
Index("ix_slots_claim", Slot.prompt_set_id, Slot.kind, Slot.served, Slot.taken.desc(), Slot.prompt_id)


class SlotTotals(Base):
    """Per (prompt set, kind, policy): the served slots rows and those with a free slot
    (``open``); kind ``prompts`` holds the set's regular (non-gold) prompts in ``served``.
    Kept by triggers (migration 0007); the labeler's progress reads them."""

    __tablename__ = "slot_totals"
    __table_args__ = (UniqueConstraint("prompt_set_id", "kind", "policy_id", name="uq_slot_totals_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_set_id: Mapped[int] = mapped_column(ForeignKey("prompt_sets.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    policy_id: Mapped[int] = mapped_column(Integer)
    served: Mapped[int] = mapped_column(Integer, default=0)
    open: Mapped[int] = mapped_column(Integer, default=0)

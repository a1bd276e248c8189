"""Submissions on tasks: rankings, demonstrations, skips, and undo.

Every function takes the task's row lock first (PostgreSQL; on SQLite the caller's
:func:`app.db.transact` holds the write lock), so a double submit is
serialised: the second one finds the first one's row.

Idempotency: a submission stores the SHA-256 of its canonical payload. Sending the
identical payload again returns the stored row (``created`` False, HTTP 200); a different
payload on a submitted task is a Conflict unless the labeler undoes it first. The time
spent is metadata and not part of the hash, so a retried request that measured a slightly
different time is still the same answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Generic, NamedTuple, TypeVar

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from app.models import FLAGS, Demonstration, PromptSet, Ranking, SubmissionStatus, Task, TaskStatus, User, Webhook
from app.models.base import utcnow
from app.services import continue_tasks, conversations, webhook_events
from app.services.errors import Conflict, Invalid, NotFound
from app.services.leases import lease_is_live, lease_until, relet_expired
from app.services.task_states import LEASED, SKIPPED, SUBMITTED, check_owner, enter_state, own_task

SubmissionT = TypeVar("SubmissionT", Ranking, Demonstration)

LIKERT_MIN, LIKERT_MAX = 1, 7
MAX_COMMENT_CHARS = 5000
MAX_SKIP_REASON_CHARS = 1000
MAX_TIME_SPENT_S = 7 * 24 * 3600


def answer_hash(payload: Any) -> str:
    """The SHA-256 of an answer's canonical JSON: the same answer again has the same hash
    (rankings, demonstrations and compare judgments alike)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _ids(ids: Sequence[int]) -> str:
    return ", ".join(str(i) for i in ids)


# --- validation ---------------------------------------------------------------------


def validate_ranking(task: Task, ranking: Sequence[Sequence[int]]) -> list[list[int]]:
    """Best-first groups covering exactly the task's completion ids, each once."""
    expected = list(task.completion_ids or [])
    if not ranking:
        raise Invalid(f"ranking is empty; rank all {len(expected)} completions of task {task.id}")
    seen: list[int] = []
    for i, group in enumerate(ranking, start=1):
        if not group:
            raise Invalid(f"ranking group {i} is empty; every group needs at least one completion id")
        seen.extend(int(c) for c in group)
    duplicates = sorted({c for c in seen if seen.count(c) > 1})
    if duplicates:
        raise Invalid(f"completion {_ids(duplicates)} appears more than once in the ranking")
    unknown = [c for c in seen if c not in expected]
    if unknown:
        raise Invalid(
            f"completion {_ids(unknown)} is not one of task {task.id}'s completions ({_ids(expected)})"
        )
    missing = [c for c in expected if c not in seen]
    if missing:
        raise Invalid(f"the ranking leaves out completion {_ids(missing)}; rank all {len(expected)} completions")
    return [sorted(int(c) for c in group) for group in ranking]


def validate_ratings(task: Task, ratings: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-completion Likert 1-7 (optional) and flags from app.models.FLAGS."""
    clean: dict[str, dict[str, Any]] = {}
    expected = set(task.completion_ids or [])
    for key, rating in ratings.items():
        try:
            cid = int(key)
        except (TypeError, ValueError):
            raise Invalid(f"ratings key {key!r} is not a completion id") from None
        if cid not in expected:
            raise Invalid(f"ratings name completion {cid}, which is not one of task {task.id}'s completions")
        likert = rating.get("likert")
        if likert is not None and (
            isinstance(likert, bool) or not isinstance(likert, int) or not LIKERT_MIN <= likert <= LIKERT_MAX
        ):
            raise Invalid(
                f"likert for completion {cid} must be an integer from {LIKERT_MIN} to {LIKERT_MAX}, not {likert!r}"
            )
        flags = list(rating.get("flags") or [])
        for flag in flags:
            if flag not in FLAGS:
                raise Invalid(f"unknown flag {flag!r} for completion {cid}; known flags: {', '.join(FLAGS)}")
        if likert is None and not flags:
            continue
        clean[str(cid)] = {"likert": likert, "flags": sorted(set(flags), key=FLAGS.index)}
    return dict(sorted(clean.items(), key=lambda kv: int(kv[0])))


def written_text(text: str | None, max_chars: int, *, what: str, empty_hint: str) -> str:
    """A labeler's written text (a demonstration, a conversation turn): Windows line ends made
    ``\n`` and the ends stripped; Invalid, naming ``what``, when it is empty or over ``max_chars``."""
    body = (text or "").replace("\r\n", "\n").strip()
    if not body:
        raise Invalid(f"{what} is empty; {empty_hint}")
    if len(body) > max_chars:
        raise Invalid(f"{what} is too long ({len(body)} characters; at most {max_chars})")
    return body


def check_time_spent(value: float | None) -> float | None:
    if value is None:
        return None
    if not 0 <= value <= MAX_TIME_SPENT_S:
        raise Invalid(f"time_spent_s must be between 0 and {MAX_TIME_SPENT_S} seconds, not {value}")
    return float(value)


# --- shared task checks -------------------------------------------------------------


ANSWERS = {"rank": "a ranking", "demonstrate": "a demonstration", "continue": "a continuation", "compare": "a comparison"}


def check_kind(task: Task, kind: str) -> None:
    if task.kind != kind:
        raise Invalid(f"task {task.id} is a {task.kind} task; it takes {ANSWERS.get(task.kind, 'another answer')}")


def check_open(db: Session, task: Task, now: datetime) -> None:
    """The task can take a first submission now: not skipped or requeued, and either its
    lease is live or (expired) its slot is still free."""
    if task.status == TaskStatus.SKIPPED:
        raise Conflict(f"task {task.id} was skipped; ask for a new task")
    if task.status == TaskStatus.REQUEUED:
        raise Conflict(f"task {task.id} was sent back by an admin; ask for a new task")
    if task.status == TaskStatus.SUBMITTED:
        raise Conflict(f"task {task.id} is already submitted")
    if not lease_is_live(task, now):
        relet_expired(db, task, now)


def undo_deadline(created_at: datetime, window_minutes: float) -> datetime:
    return created_at + timedelta(minutes=window_minutes)


class AnswerTarget(NamedTuple, Generic[SubmissionT]):
    """What answering a task needs to know, read in one statement (:func:`answer_target`)."""

    task: Task  # row-locked, current values
    existing: SubmissionT | None  # the answer stored for it before, if any
    in_conversation: bool  # its set is a conversation set (the tree follows the answer)
    hooks_active: bool  # some webhook is active (only then are events looked at)


def answer_target(db: Session, task_id: int, user: User, model: type[SubmissionT]) -> AnswerTarget[SubmissionT]:
    """The labeler's own task, locked, with its stored ``model`` row, its set's kind and
    whether any webhook is active: one round trip on the submit path (issue 16) where
    there were four. 404 when there is no such task, 403 when it is someone else's."""
    row = db.execute(
        select(Task, model, PromptSet.kind, exists().where(Webhook.is_active.is_(True)))
        .join(PromptSet, PromptSet.id == Task.prompt_set_id)
        .outerjoin(model, model.task_id == Task.id)
        .where(Task.id == task_id)
        .limit(1)
        .with_for_update(of=Task, key_share=True)
        .execution_options(populate_existing=True)
    ).first()
    if row is None:
        raise NotFound(f"task {task_id} not found")
    task, existing, set_kind, hooks = row
    return AnswerTarget(check_owner(task, user), existing, conversations.is_conversation_kind(set_kind), bool(hooks))


def _store(
    db: Session,
    task: Task,
    model: type[SubmissionT],
    what: str,
    payload_hash: str,
    now: datetime,
    existing: SubmissionT | None,
    **fields: Any,
) -> tuple[SubmissionT, bool]:
    """Store a task's submission once: the identical payload again returns the stored row
    (``created`` False, so a client retry is idempotent), a different one is a conflict.

    The task must still be open (see :func:`check_open`). A row left behind by a requeue
    that was undone elsewhere is replaced. ``existing``: the row stored for the task before
    (:func:`answer_target`).
    """
    if existing is not None and task.status == TaskStatus.SUBMITTED:
        if existing.payload_hash == payload_hash:
            return existing, False
        raise Conflict(f"task {task.id} already has a different {what}; undo it first to change it")
    check_open(db, task, now)
    if existing is not None:
        db.delete(existing)
        db.flush()
    row = model(
        task_id=task.id,
        prompt_id=task.prompt_id,
        labeler_id=task.labeler_id,
        payload_hash=payload_hash,
        status=SubmissionStatus.ACTIVE.value,
        created_at=now,
        **fields,
    )
    db.add(row)
    enter_state(task, SUBMITTED, submitted_at=now)
    db.flush()
    return row, True


# --- rankings -----------------------------------------------------------------------


def submit_ranking(
    db: Session,
    task_id: int,
    user: User,
    *,
    ranking: Sequence[Sequence[int]],
    ratings: Mapping[str, Mapping[str, Any]] | None = None,
    all_unacceptable: bool = False,
    comment: str = "",
    time_spent_s: float | None = None,
    now: datetime | None = None,
) -> tuple[Ranking, bool]:
    """Store the labeler's ranking of a rank task. Returns (row, created).

    ``ranking`` is best-first groups of completion ids (ties allowed, order inside a group
    does not matter); ``ratings`` maps completion ids to ``{"likert": 1-7, "flags": [...]}``.
    Run it inside :func:`app.db.transact`.
    """
    now = now or utcnow()
    task, existing, in_conversation, hooks_active = answer_target(db, task_id, user, Ranking)
    check_kind(task, "rank")
    groups = validate_ranking(task, ranking)
    clean_ratings = validate_ratings(task, ratings or {})
    comment = (comment or "").strip()
    if len(comment) > MAX_COMMENT_CHARS:
        raise Invalid(f"comment is too long ({len(comment)} characters; at most {MAX_COMMENT_CHARS})")
    spent = check_time_spent(time_spent_s)
    payload_hash = answer_hash(
        {"ranking": groups, "ratings": clean_ratings, "all_unacceptable": bool(all_unacceptable), "comment": comment}
    )
    row, created = _store(
        db,
        task,
        Ranking,
        "ranking",
        payload_hash,
        now,
        existing,
        ranking=groups,
        ratings=clean_ratings,
        all_unacceptable=bool(all_unacceptable),
        comment=comment,
        time_spent_s=spent,
    )
    if created and in_conversation:
        conversations.refresh_best(db, [task.prompt_id])
    if created and hooks_active:
        webhook_events.ranking_stored(db, task.prompt_set_id)  # prompt_set.completed, when it fills the set
    return row, created


# --- demonstrations -----------------------------------------------------------------


def submit_demonstration(
    db: Session,
    task_id: int,
    user: User,
    *,
    text: str,
    max_chars: int,
    time_spent_s: float | None = None,
    now: datetime | None = None,
) -> tuple[Demonstration, bool]:
    """Store the labeler's written response for a demonstrate task. Returns (row, created)."""
    now = now or utcnow()
    task, existing, in_conversation, _ = answer_target(db, task_id, user, Demonstration)
    check_kind(task, "demonstrate")
    body = written_text(text, max_chars, what="the demonstration",
                        empty_hint="write the response you would want the assistant to give")
    spent = check_time_spent(time_spent_s)
    payload_hash = answer_hash({"text": body})
    row, created = _store(
        db, task, Demonstration, "demonstration", payload_hash, now, existing, text=body, time_spent_s=spent
    )
    if created and in_conversation:
        conversations.add_written_reply(db, row)
    return row, created


# --- skip ---------------------------------------------------------------------------


def skip_task(db: Session, task_id: int, user: User, *, reason: str | None = None) -> Task:
    """Give a task back without an answer. The slot frees at once and this labeler does not
    get the prompt again. Skipping a skipped task again is a no-op."""
    task = own_task(db, task_id, user, lock=True)
    if task.status == TaskStatus.SKIPPED:
        return task
    if task.status == TaskStatus.SUBMITTED:
        raise Conflict(f"task {task.id} is already submitted; undo the submission first to skip it")
    if task.status == TaskStatus.REQUEUED:
        raise Conflict(f"task {task.id} was sent back by an admin; there is nothing to skip")
    reason = (reason or "").strip()
    if len(reason) > MAX_SKIP_REASON_CHARS:
        raise Invalid(f"skip reason is too long ({len(reason)} characters; at most {MAX_SKIP_REASON_CHARS})")
    enter_state(task, SKIPPED)
    task.skip_reason = reason or None
    db.flush()
    return task


# --- undo ---------------------------------------------------------------------------


def check_undoable(db: Session, task: Task, user: User, window_minutes: float, now: datetime) -> None:
    """Raise :class:`Conflict` unless ``task`` is submitted, is ``user``'s last submission,
    and its undo window is still open (the rule for every kind of task)."""
    if task.status != TaskStatus.SUBMITTED or task.submitted_at is None:
        raise Conflict(f"task {task.id} has no submission to undo (it is {task.status})")
    last = db.scalar(
        select(Task.id)
        .where(Task.labeler_id == user.id, Task.status == TaskStatus.SUBMITTED)
        .order_by(Task.submitted_at.desc(), Task.id.desc())
        .limit(1)
    )
    if last != task.id:
        raise Conflict(f"only your last submission can be undone; task {last} came after task {task.id}")
    deadline = undo_deadline(task.submitted_at, window_minutes)
    if now > deadline:
        raise Conflict(
            f"the undo window of {window_minutes:g} minutes for task {task.id} closed at {deadline:%H:%M:%S} UTC"
        )


def undo_submission(
    db: Session,
    task_id: int,
    user: User,
    *,
    window_minutes: float,
    lease_minutes: float,
    now: datetime | None = None,
) -> tuple[Task, dict[str, Any]]:
    """Take back the labeler's own last submission within the undo window.

    Deletes the Ranking/Demonstration row and puts the task back to ``leased`` with a fresh
    lease (its slot never freed, so nobody else can have taken it). Returns the task and
    the answer that was taken back, so the page can offer it for redoing.
    """
    now = now or utcnow()
    task = own_task(db, task_id, user, lock=True)
    if task.status == TaskStatus.REQUEUED:
        raise Conflict(f"task {task.id} was sent back by an admin; it cannot be undone")
    check_undoable(db, task, user, window_minutes, now)
    previous: dict[str, Any]
    if task.kind == "rank":
        row = db.scalar(select(Ranking).where(Ranking.task_id == task.id))
        previous = (
            {
                "ranking": row.ranking,
                "ratings": row.ratings,
                "all_unacceptable": row.all_unacceptable,
                "comment": row.comment,
                "time_spent_s": row.time_spent_s,
            }
            if row
            else {}
        )
        db.execute(delete(Ranking).where(Ranking.task_id == task.id))
        conversations.refresh_best(db, [task.prompt_id])
    elif task.kind == "continue":
        previous = continue_tasks.undo_continuation(db, task)
    else:
        demo = db.scalar(select(Demonstration).where(Demonstration.task_id == task.id))
        previous = {"text": demo.text, "time_spent_s": demo.time_spent_s} if demo else {}
        if demo is not None:
            conversations.check_reply_removable(db, demo.id)
        db.execute(delete(Demonstration).where(Demonstration.task_id == task.id))
    enter_state(task, LEASED, lease_expires_at=lease_until(now, lease_minutes))
    db.flush()
    return task, previous

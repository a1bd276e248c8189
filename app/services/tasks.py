"""Task assignment with leases.

A *slot* of a prompt (for one kind, rank or demonstrate) is taken by a task that is
``submitted``, or ``leased`` with ``lease_expires_at`` in the future. A prompt serves at
most ``PromptSet.overlap`` slots (gold prompts: unlimited). Expired leases free their slot
without anyone having to clean up; requeued and skipped tasks take no slot.

A labeler is kept off a prompt (of a kind) by any of their own tasks that is not expired:
submitted, skipped, requeued, or leased and live.

Claims are race-free on both backends. On PostgreSQL the claimer locks its own user row
(so one labeler's parallel requests are serialised), then a candidate prompt row with
``SELECT ... FOR NO KEY UPDATE SKIP LOCKED`` (the ``FOR UPDATE`` strength that does not
block foreign-key inserts such as new completions), and recounts the slots in a fresh
statement while holding the lock before it inserts the task. On SQLite the whole claim is
one ``BEGIN IMMEDIATE`` write transaction. :func:`transact` runs such a unit of work and
retries it on serialization failures, deadlocks and a busy SQLite database.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, exists, func, or_, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, aliased

from app.models import TASK_KINDS, Completion, Demonstration, Policy, Prompt, PromptSet, Ranking, Task, User
from app.models.base import utcnow
from app.services.errors import Conflict, Forbidden, Invalid, NotFound

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_SQLSTATES = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock not available


# --- transactions -------------------------------------------------------------------


def is_sqlite_session(db: Session) -> bool:
    return db.get_bind().dialect.name == "sqlite"


def _retryable(exc: DBAPIError) -> bool:
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
        return True
    message = str(orig).lower()
    return "database is locked" in message or "database is busy" in message


_sqlite_locks: dict[str, threading.Lock] = {}
_sqlite_locks_guard = threading.Lock()


def _process_lock(db: Session) -> threading.Lock | None:
    """One in-process lock per SQLite database file.

    SQLite's busy handler polls with sleeps, so many threads of one server waiting on
    ``BEGIN IMMEDIATE`` crawl and each holds a pooled connection while it waits. Queuing
    them on a Python lock first hands the write lock over at once; the file lock still
    serialises other processes.
    """
    if not is_sqlite_session(db):
        return None
    url = str(db.get_bind().url)
    with _sqlite_locks_guard:
        return _sqlite_locks.setdefault(url, threading.Lock())


def transact(db: Session, fn: Callable[[], T], *, attempts: int = 8) -> T:
    """Run ``fn`` in a fresh write transaction and commit it.

    Whatever ``db`` had open is committed first (request setup only reads). On SQLite the
    transaction starts with ``BEGIN IMMEDIATE`` so that its reads and writes are one atomic
    step. A serialization failure, a deadlock or a busy database rolls back and runs
    ``fn`` again (at most ``attempts`` times, with jittered backoff); service errors
    propagate after a rollback.
    """
    db.commit()
    lock = _process_lock(db)
    for attempt in range(1, attempts + 1):
        try:
            with lock if lock is not None else nullcontext():
                if lock is not None:
                    db.execute(text("BEGIN IMMEDIATE"))
                try:
                    result = fn()
                    db.commit()
                except BaseException:
                    db.rollback()
                    raise
            return result
        except DBAPIError as exc:
            if attempt == attempts or not _retryable(exc):
                raise
            log.info("retrying labeling transaction after %s (attempt %d)", type(exc.orig).__name__, attempt)
            time.sleep(min(0.02 * 2**attempt, 1.0) * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")


# --- slot accounting ----------------------------------------------------------------


def takes_slot(now: datetime, t: Any = Task) -> ColumnElement[bool]:
    """Tasks (``t``: Task or an alias) that occupy a slot: submitted, or leased and live."""
    return or_(t.status == "submitted", and_(t.status == "leased", t.lease_expires_at > now))


def keeps_labeler_off(now: datetime, t: Any = Task) -> ColumnElement[bool]:
    """A labeler's own tasks that keep them off a prompt: every task that has not expired."""
    return or_(
        t.status.in_(("submitted", "skipped", "requeued")),
        and_(t.status == "leased", t.lease_expires_at > now),
    )


def _taken_slots(kind: str, now: datetime) -> Any:
    t = aliased(Task)
    return (
        select(func.count(t.id))
        .where(t.prompt_id == Prompt.id, t.kind == kind, takes_slot(now, t))
        .correlate(Prompt)
        .scalar_subquery()
    )


def _labeler_has(kind: str, labeler_id: int, now: datetime) -> ColumnElement[bool]:
    t = aliased(Task)
    return (
        exists()
        .where(t.prompt_id == Prompt.id, t.kind == kind, t.labeler_id == labeler_id, keeps_labeler_off(now, t))
        .correlate(Prompt)
    )


def _has_k_ready(k: int) -> ColumnElement[bool]:
    c = aliased(Completion)
    return exists(
        select(c.policy_id)
        .where(c.prompt_id == Prompt.id, c.status == "ready")
        .group_by(c.policy_id)
        .having(func.count(c.id) >= k)
    )


def _open_conditions(ps: PromptSet, kind: str, labeler_id: int, now: datetime) -> list[ColumnElement[bool]]:
    """Prompts of ``ps`` open to this labeler, except the completions condition for rank."""
    conds = [
        Prompt.prompt_set_id == ps.id,
        ~_labeler_has(kind, labeler_id, now),
        _taken_slots(kind, now) < ps.overlap,
    ]
    if kind == "rank":
        conds.append(Prompt.is_gold.is_(False))
    else:
        conds.append(Prompt.wants_demonstration.is_(True))
    return conds


def _gold_conditions(ps: PromptSet, labeler_id: int, now: datetime) -> list[ColumnElement[bool]]:
    return [
        Prompt.prompt_set_id == ps.id,
        Prompt.is_gold.is_(True),
        Prompt.gold_ranking.is_not(None),
        ~_labeler_has("rank", labeler_id, now),
    ]


MINE = "the labeler already has a task for this prompt"


@dataclass
class SlotCheck:
    ok: bool
    reason: str = ""


def check_slot(
    db: Session,
    prompt: Prompt,
    kind: str,
    labeler_id: int,
    overlap: int,
    now: datetime,
    exclude_task_id: int | None = None,
) -> SlotCheck:
    """Whether this labeler may hold a slot of ``prompt`` now. Call it holding the prompt's lock."""
    others = [Task.prompt_id == prompt.id, Task.kind == kind]
    if exclude_task_id is not None:
        others.append(Task.id != exclude_task_id)
    mine = db.scalar(
        select(func.count(Task.id)).where(*others, Task.labeler_id == labeler_id, keeps_labeler_off(now))
    )
    if mine:
        return SlotCheck(False, MINE)
    if prompt.is_gold and kind == "rank":
        return SlotCheck(True)
    taken = db.scalar(select(func.count(Task.id)).where(*others, takes_slot(now))) or 0
    if taken >= overlap:
        return SlotCheck(False, f"all {overlap} slot(s) of this prompt are taken")
    return SlotCheck(True)


def lock_prompt(db: Session, prompt_id: int) -> Prompt:
    """Lock a prompt row (PostgreSQL: FOR NO KEY UPDATE, waiting) and return it."""
    prompt = db.scalar(
        select(Prompt).where(Prompt.id == prompt_id).with_for_update(key_share=True).execution_options(
            populate_existing=True
        )
    )
    if prompt is None:
        raise NotFound(f"prompt {prompt_id} not found")
    return prompt


# --- choosing completions -----------------------------------------------------------


def choose_completions(db: Session, prompt: Prompt, k: int) -> list[int] | None:
    """K ready completion ids of ONE policy: the deployed one if it has K, else the newest
    policy that has K. The oldest K of that policy, so overlapping labelers see the same."""
    if prompt.is_gold:
        ids = [cid for group in (prompt.gold_ranking or []) for cid in group]
        found = set(db.scalars(select(Completion.id).where(Completion.id.in_(ids), Completion.prompt_id == prompt.id)))
        return ids if ids and found == set(ids) and len(found) == len(ids) else None
    rows = db.execute(
        select(Completion.id, Completion.policy_id, Policy.version, Policy.deployed)
        .join(Policy, Policy.id == Completion.policy_id)
        .where(Completion.prompt_id == prompt.id, Completion.status == "ready")
        .order_by(Completion.id)
    ).all()
    by_policy: dict[int, list[int]] = defaultdict(list)
    rank_key: dict[int, tuple[bool, int]] = {}
    for cid, policy_id, version, deployed in rows:
        by_policy[policy_id].append(cid)
        rank_key[policy_id] = (bool(deployed), version)
    eligible = [pid for pid, ids in by_policy.items() if len(ids) >= k]
    if not eligible:
        return None
    best = max(eligible, key=lambda pid: rank_key[pid])
    return by_policy[best][:k]


# --- claiming -----------------------------------------------------------------------


def get_prompt_set(db: Session, prompt_set_id: int) -> PromptSet:
    ps = db.get(PromptSet, prompt_set_id)
    if ps is None:
        raise NotFound(f"prompt set {prompt_set_id} not found")
    return ps


def held_task(db: Session, labeler_id: int, prompt_set_id: int, kind: str, now: datetime) -> Task | None:
    """The labeler's oldest live lease in this set and kind, if any."""
    return db.scalar(
        select(Task)
        .where(
            Task.labeler_id == labeler_id,
            Task.prompt_set_id == prompt_set_id,
            Task.kind == kind,
            Task.status == "leased",
            Task.lease_expires_at > now,
        )
        .order_by(Task.created_at, Task.id)
        .limit(1)
    )


def _claim_from(
    db: Session,
    base: Any,
    accept: Callable[[Prompt], bool],
    max_tries: int = 50,
) -> Prompt | None:
    """Lock the first prompt of ``base`` that ``accept`` (a recount under the lock) agrees to.

    First pass skips prompts other claimers hold locked; when that finds nothing, a second
    pass waits for them, so a set with free slots never answers "nothing left" only
    because someone else was claiming at the same moment.
    """
    rejected: list[int] = []
    for skip_locked in (True, False):
        for _ in range(max_tries):
            query = base.limit(1).with_for_update(of=Prompt, skip_locked=skip_locked, key_share=True)
            if rejected:
                query = query.where(Prompt.id.not_in(rejected))
            prompt = db.scalar(query.execution_options(populate_existing=True))
            if prompt is None:
                break
            if accept(prompt):
                return prompt
            rejected.append(prompt.id)
    return None


def next_task(
    db: Session,
    user: User,
    prompt_set_id: int,
    kind: str,
    *,
    lease_minutes: float,
    gold_rate: float = 0.0,
    now: datetime | None = None,
    rng: random.Random | None = None,
) -> Task | None:
    """The labeler's task in this set: their live lease if they hold one, else a new one.

    Returns None when nothing is left for them (or the set is paused or archived). Run it
    inside :func:`transact`.
    """
    if kind not in TASK_KINDS:
        raise Invalid(f"kind must be one of {', '.join(TASK_KINDS)}, not {kind!r}")
    now = now or utcnow()
    rng = rng or random.Random()
    ps = get_prompt_set(db, prompt_set_id)
    if ps.status != "active":
        return None
    # Serialise this labeler's own concurrent requests (two tabs, double clicks).
    db.execute(select(User.id).where(User.id == user.id).with_for_update(key_share=True))
    held = held_task(db, user.id, ps.id, kind, now)
    if held is not None:
        return held
    # Back after the lease ran out (a break, a reload): the same task again if its slot
    # is still free, so the page can restore what the labeler had entered.
    stale = db.scalar(
        select(Task)
        .where(
            Task.labeler_id == user.id,
            Task.prompt_set_id == ps.id,
            Task.kind == kind,
            or_(Task.status == "expired", and_(Task.status == "leased", Task.lease_expires_at <= now)),
        )
        .order_by(Task.lease_expires_at.desc(), Task.id.desc())
        .limit(1)
    )
    if stale is not None:
        prompt = lock_prompt(db, stale.prompt_id)
        if check_slot(db, prompt, kind, user.id, ps.overlap, now, exclude_task_id=stale.id).ok:
            stale.status = "leased"
            stale.lease_expires_at = now + timedelta(minutes=lease_minutes)
            db.flush()
            return stale
    db.execute(
        update(Task)
        .where(Task.labeler_id == user.id, Task.status == "leased", Task.lease_expires_at <= now)
        .values(status="expired")
        .execution_options(synchronize_session=False)
    )

    chosen: dict[int, list[int]] = {}

    def accept(prompt: Prompt) -> bool:
        if not check_slot(db, prompt, kind, user.id, ps.overlap, now).ok:
            return False
        if kind == "rank":
            ids = choose_completions(db, prompt, ps.k)
            if ids is None:
                return False
            chosen[prompt.id] = ids
        else:
            chosen[prompt.id] = []
        return True

    prompt: Prompt | None = None
    if kind == "rank" and gold_rate > 0 and rng.random() < gold_rate:
        gold = select(Prompt).where(*_gold_conditions(ps, user.id, now)).order_by(Prompt.id)
        prompt = _claim_from(db, gold, accept)
    if prompt is None:
        conds = _open_conditions(ps, kind, user.id, now)
        if kind == "rank":
            conds.append(_has_k_ready(ps.k))
        # Fill prompts that others have started first, so overlapping judgements complete.
        base = select(Prompt).where(*conds).order_by(_taken_slots(kind, now).desc(), Prompt.id)
        prompt = _claim_from(db, base, accept)
    if prompt is None:
        return None

    task = Task(
        prompt_id=prompt.id,
        prompt_set_id=ps.id,
        labeler_id=user.id,
        kind=kind,
        status="leased",
        completion_ids=[],
        lease_expires_at=now + timedelta(minutes=lease_minutes),
        created_at=now,
    )
    db.add(task)
    db.flush()
    ids = list(chosen[prompt.id])
    random.Random(f"task:{task.id}").shuffle(ids)  # display order: deterministic per task
    task.completion_ids = ids
    db.flush()
    return task


# --- reading and renewing tasks -----------------------------------------------------


def get_task(db: Session, task_id: int, *, lock: bool = False) -> Task:
    query = select(Task).where(Task.id == task_id)
    if lock:
        query = query.with_for_update(key_share=True).execution_options(populate_existing=True)
    task = db.scalar(query)
    if task is None:
        raise NotFound(f"task {task_id} not found")
    return task


def own_task(db: Session, task_id: int, user: User, *, lock: bool = False) -> Task:
    """The task if it is this labeler's; 404 if there is none, 403 if it is someone else's."""
    task = get_task(db, task_id, lock=lock)
    if task.labeler_id != user.id:
        raise Forbidden(f"task {task_id} belongs to another labeler")
    return task


def relet_expired(db: Session, task: Task, now: datetime) -> None:
    """Let a labeler keep working on a task whose lease ran out, if its slot is still free.

    Locks the prompt and recounts; raises Conflict when another labeler took the slot.
    """
    prompt = lock_prompt(db, task.prompt_id)
    ps = get_prompt_set(db, task.prompt_set_id)
    check = check_slot(db, prompt, task.kind, task.labeler_id, ps.overlap, now, exclude_task_id=task.id)
    if not check.ok:
        why = (
            "you have a newer task for the same prompt"
            if check.reason == MINE
            else "another labeler has taken its slot"
        )
        raise Conflict(
            f"the lease on task {task.id} expired at {task.lease_expires_at:%H:%M} UTC and {why}; "
            "ask for a new task"
        )


def lease_is_live(task: Task, now: datetime) -> bool:
    return task.status == "leased" and task.lease_expires_at > now


def renew_lease(db: Session, task_id: int, user: User, *, lease_minutes: float, now: datetime | None = None) -> Task:
    """Extend the lease of an own task that is being worked on (the page calls it while
    the labeler is active). An expired lease is renewed only if its slot is still free."""
    now = now or utcnow()
    task = own_task(db, task_id, user, lock=True)
    if task.status not in ("leased", "expired"):
        raise Conflict(f"task {task.id} is {task.status}; there is no lease to renew")
    if not lease_is_live(task, now):
        relet_expired(db, task, now)
    task.status = "leased"
    task.lease_expires_at = max(task.lease_expires_at, now + timedelta(minutes=lease_minutes))
    db.flush()
    return task


def task_view(db: Session, task: Task) -> dict[str, Any]:
    """The task as its labeler sees it (the TaskOut shape)."""
    prompt = db.get(Prompt, task.prompt_id)
    if prompt is None:
        raise NotFound(f"prompt {task.prompt_id} of task {task.id} not found")
    texts = dict(
        db.execute(select(Completion.id, Completion.text).where(Completion.id.in_(task.completion_ids or []))).all()
    )
    return {
        "id": task.id,
        "kind": task.kind,
        "status": task.status,
        "prompt_set_id": task.prompt_set_id,
        "prompt_id": task.prompt_id,
        "prompt": prompt.display_text,
        "messages": [
            {"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in prompt.messages
        ]
        if prompt.messages
        else None,
        "completions": [{"id": cid, "text": texts[cid]} for cid in task.completion_ids or [] if cid in texts],
        "lease_expires_at": task.lease_expires_at,
        "created_at": task.created_at,
        "server_time": utcnow(),
    }


# --- progress -----------------------------------------------------------------------


@dataclass
class SetProgress:
    prompt_set_id: int
    name: str
    status: str
    ranked: int
    demonstrated: int
    skipped: int
    holding: int
    rank_left: int
    demonstrate_left: int
    waiting_for_completions: int
    offers_demonstrations: bool
    next_lease_expiry: datetime | None


def progress(db: Session, user: User, ps: PromptSet, now: datetime | None = None) -> SetProgress:
    """What this labeler has done in the set and what is left for them right now."""
    now = now or utcnow()

    def count_prompts(*conds: ColumnElement[bool]) -> int:
        return db.scalar(select(func.count(Prompt.id)).where(*conds)) or 0

    mine = select(Task.kind, Task.status, func.count(Task.id)).where(
        Task.labeler_id == user.id, Task.prompt_set_id == ps.id
    )
    counts: dict[tuple[str, str], int] = {
        (kind, status): n for kind, status, n in db.execute(mine.group_by(Task.kind, Task.status)).all()
    }
    ranked = db.scalar(
        select(func.count(Ranking.id))
        .join(Task, Task.id == Ranking.task_id)
        .where(Ranking.labeler_id == user.id, Task.prompt_set_id == ps.id, Ranking.status == "active")
    )
    demonstrated = db.scalar(
        select(func.count(Demonstration.id))
        .join(Task, Task.id == Demonstration.task_id)
        .where(Demonstration.labeler_id == user.id, Task.prompt_set_id == ps.id, Demonstration.status == "active")
    )
    holding = db.scalar(
        select(func.count(Task.id)).where(
            Task.labeler_id == user.id, Task.prompt_set_id == ps.id, Task.status == "leased", Task.lease_expires_at > now
        )
    )
    rank_open = _open_conditions(ps, "rank", user.id, now)
    rank_left = count_prompts(*rank_open, _has_k_ready(ps.k))
    waiting = count_prompts(*rank_open, ~_has_k_ready(ps.k))
    demo_left = count_prompts(*_open_conditions(ps, "demonstrate", user.id, now))
    offers_demos = ps.demonstration_share > 0 or count_prompts(
        Prompt.prompt_set_id == ps.id, Prompt.wants_demonstration.is_(True)
    ) > 0
    # When could a full prompt open up again? The earliest live lease of another labeler
    # on a prompt this labeler has not done.
    own = aliased(Task)
    next_expiry = db.scalar(
        select(func.min(Task.lease_expires_at)).where(
            Task.prompt_set_id == ps.id,
            Task.labeler_id != user.id,
            Task.status == "leased",
            Task.lease_expires_at > now,
            ~exists().where(
                own.prompt_id == Task.prompt_id,
                own.kind == Task.kind,
                own.labeler_id == user.id,
                keeps_labeler_off(now, own),
            ),
        )
    )
    return SetProgress(
        prompt_set_id=ps.id,
        name=ps.name,
        status=ps.status,
        ranked=ranked or 0,
        demonstrated=demonstrated or 0,
        skipped=sum(n for (_, status), n in counts.items() if status == "skipped"),
        holding=holding or 0,
        rank_left=rank_left,
        demonstrate_left=demo_left,
        waiting_for_completions=waiting,
        offers_demonstrations=offers_demos,
        next_lease_expiry=next_expiry,
    )


def active_sets(db: Session) -> list[PromptSet]:
    return list(db.scalars(select(PromptSet).where(PromptSet.status == "active").order_by(PromptSet.name)))

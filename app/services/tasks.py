"""Task assignment with leases.

A *slot* is taken by a task that is ``submitted``, or ``leased`` with ``lease_expires_at``
in the future. Expired leases free their slot without anyone having to clean up; requeued
and skipped tasks take no slot. Rank slots belong to a (prompt, policy) pair: a rank task
records the policy whose completions it shows (``Task.policy_id``), and each pair serves at
most ``PromptSet.overlap`` slots, so after a redeploy the new policy's completions of a
prompt are ranked again. Demonstrate slots belong to the prompt (``overlap`` per prompt).
Gold prompts are not limited by overlap.

A labeler is kept off a (prompt, policy) pair for ranking, or off a prompt for
demonstrating, by any of their own tasks there that is not expired: submitted, skipped,
requeued, or leased and live. Gold prompts are served once per labeler whatever policy.

Which policy a rank task shows (:func:`served_completions`): the deployed policy if it has
K ready completions of the prompt, else the newest policy that has K. The slots checked are
that policy's.

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

from sqlalchemy import ColumnElement, Integer, Select, and_, bindparam, case, exists, func, or_, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, aliased

from app.models import TASK_KINDS, Completion, Demonstration, Policy, Prompt, PromptSet, Ranking, Task, User
from app.models.base import UTCDateTime, utcnow
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


PolicyRef = int | ColumnElement[Any] | None
"""A policy id, or an SQL expression for one (a column of :func:`_served_pairs`), or None
(no policy filter)."""


def _taken_slots(kind: str, now: datetime, policy: PolicyRef = None) -> Any:
    """Per prompt (correlated to ``Prompt``): slots taken, of one policy's rank tasks when
    ``policy`` is given."""
    t = aliased(Task)
    conds = [t.prompt_id == Prompt.id, t.kind == kind, takes_slot(now, t)]
    if policy is not None:
        conds.append(t.policy_id == policy)
    return select(func.count(t.id)).where(*conds).correlate_except(t).scalar_subquery()


def _labeler_has(kind: str, labeler_id: int, now: datetime, policy: PolicyRef = None) -> ColumnElement[bool]:
    """Per prompt: the labeler has a task that keeps them off (of one policy when given)."""
    t = aliased(Task)
    conds = [t.prompt_id == Prompt.id, t.kind == kind, t.labeler_id == labeler_id, keeps_labeler_off(now, t)]
    if policy is not None:
        conds.append(t.policy_id == policy)
    return exists().where(*conds).correlate_except(t)


def _served_pairs(ps: PromptSet) -> Any:
    """(prompt_id, policy_id) per regular prompt of ``ps`` that can be ranked now: the policy
    a rank task would show, as in :func:`served_completions` (the deployed policy if it has
    K ready completions of the prompt, else the newest policy that has K). Prompts where no
    policy has K are absent. A CTE, so a statement that refers to it more than once
    computes it once.
    """
    p, c, d, pol = aliased(Prompt), aliased(Completion), aliased(Completion), aliased(Policy)
    deployed = select(Policy.id).where(Policy.deployed.is_(True)).scalar_subquery()
    deployed_ready = (
        select(func.count(d.id))
        .where(d.prompt_id == p.id, d.policy_id == deployed, d.status == "ready")
        .correlate(p)
        .scalar_subquery()
    )
    newest_with_k = (
        select(c.policy_id)
        .join(pol, pol.id == c.policy_id)
        .where(c.prompt_id == p.id, c.status == "ready")
        .group_by(c.policy_id, pol.version)
        .having(func.count(c.id) >= ps.k)
        .order_by(pol.version.desc())
        .limit(1)
        .correlate(p)
        .scalar_subquery()
    )
    policy = case((deployed_ready >= ps.k, deployed), else_=newest_with_k)
    per_prompt = (
        select(p.id.label("prompt_id"), policy.label("policy_id"))
        .where(p.prompt_set_id == ps.id, p.is_gold.is_(False))
        # OFFSET 0 keeps the database from inlining this subquery into the outer query,
        # where the policy expression would be evaluated once per reference, not per prompt.
        .offset(0)
        .subquery("per_prompt")
    )
    return (
        select(per_prompt.c.prompt_id, per_prompt.c.policy_id)
        .where(per_prompt.c.policy_id.is_not(None))
        .cte("served")
    )


def _has_k_ready_of(k: int, policy_id: int) -> ColumnElement[bool]:
    c = aliased(Completion)
    ready = (
        select(func.count(c.id))
        .where(c.prompt_id == Prompt.id, c.policy_id == policy_id, c.status == "ready")
        .correlate_except(c)
        .scalar_subquery()
    )
    return ready >= k


def _open_prompts(
    ps: PromptSet, kind: str, labeler_id: int, now: datetime, *columns: Any, served: Any = None
) -> Select[Any]:
    """``select(*columns)`` over the prompts of ``ps`` this labeler can be given a task for
    now (gold prompts aside), ordered for claiming: prompts that others have started come
    first, so overlapping judgements complete, then by id.

    Rank: joined to the prompt's served (prompt, policy) pair (``served``: the
    :func:`_served_pairs` of ``ps`` to reuse), which must have a free slot the labeler is
    not kept off. Demonstrate: the prompt wants demonstrations and has a free slot the
    labeler is not kept off.
    """
    if kind == "rank":
        served = _served_pairs(ps) if served is None else served
        taken = _taken_slots(kind, now, served.c.policy_id)
        query = (
            select(*columns)
            .select_from(Prompt)
            .join(served, served.c.prompt_id == Prompt.id)
            .where(~_labeler_has(kind, labeler_id, now, served.c.policy_id))
        )
    else:
        taken = _taken_slots(kind, now)
        query = (
            select(*columns)
            .where(Prompt.prompt_set_id == ps.id, Prompt.wants_demonstration.is_(True))
            .where(~_labeler_has(kind, labeler_id, now))
        )
    return query.where(taken < ps.overlap).order_by(taken.desc(), Prompt.id)


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
    policy_id: int | None = None,
) -> SlotCheck:
    """Whether this labeler may hold a slot of ``prompt`` now. Call it holding the prompt's lock.

    For a rank task on a regular prompt the slots are those of ``policy_id`` (the policy
    whose completions the task shows); gold prompts and demonstrations count per prompt.
    """
    others = [Task.prompt_id == prompt.id, Task.kind == kind]
    if kind == "rank" and not prompt.is_gold:
        others.append(Task.policy_id.is_(None) if policy_id is None else Task.policy_id == policy_id)
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


def served_completions(db: Session, prompt: Prompt, k: int) -> tuple[int | None, list[int]] | None:
    """(policy id, completion ids) a rank task on ``prompt`` shows now, or None.

    Regular prompts: K ready completions of ONE policy, the deployed one if it has K, else
    the newest policy that has K; the oldest K of it, so overlapping labelers see the same.
    Gold prompts: exactly the gold ranking's completions; the policy is that of the first.
    """
    if prompt.is_gold:
        ids = [cid for group in (prompt.gold_ranking or []) for cid in group]
        found = dict(
            db.execute(
                select(Completion.id, Completion.policy_id).where(
                    Completion.id.in_(ids), Completion.prompt_id == prompt.id
                )
            ).all()
        )
        if not ids or set(found) != set(ids) or len(found) != len(ids):
            return None
        return found[ids[0]], ids
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
    return best, by_policy[best][:k]


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


class _SetParams:
    """Bind parameters standing in for a prompt set's id, K and overlap in the claim
    statements, which are built once (:func:`_claim_statement`)."""

    id = bindparam("ps_id", type_=Integer)
    k = bindparam("ps_k", type_=Integer)
    overlap = bindparam("ps_overlap", type_=Integer)


_claim_statements: dict[tuple[str, bool], Any] = {}


def _claim_statement(which: str, skip_locked: bool) -> Any:
    """The claim query of ``which`` (rank, demonstrate or gold): the first open prompt not
    in ``rejected``, locked. Built once per process with bind parameters and then reused:
    building it (aliases, correlated subqueries, the served pairs) took about 10 ms of CPU,
    the largest single cost of a claim request under load (docs/benchmarks.md, "Load"), and
    a reused statement also keeps its memoized cache key. Parameters: ``ps_id``, ``ps_k``,
    ``ps_overlap``, ``labeler_id``, ``now`` and ``rejected`` (see :func:`next_task`).
    """
    key = (which, skip_locked)
    stmt = _claim_statements.get(key)
    if stmt is None:
        ps: Any = _SetParams
        labeler_id: Any = bindparam("labeler_id", type_=Integer)
        now: Any = bindparam("now", type_=UTCDateTime())
        if which == "gold":
            base = select(Prompt).where(*_gold_conditions(ps, labeler_id, now)).order_by(Prompt.id)
        else:
            base = _open_prompts(ps, which, labeler_id, now, Prompt)
        stmt = (
            base.where(Prompt.id.not_in(bindparam("rejected", expanding=True)))
            .limit(1)
            .with_for_update(of=Prompt, skip_locked=skip_locked, key_share=True)
            .execution_options(populate_existing=True)
        )
        _claim_statements[key] = stmt
    return stmt


def _claim_from(
    db: Session,
    which: str,
    params: dict[str, Any],
    accept: Callable[[Prompt], bool],
    max_tries: int = 50,
) -> Prompt | None:
    """Lock the first prompt of the ``which`` claim query that ``accept`` (a recount under
    the lock) agrees to.

    First pass skips prompts other claimers hold locked; when that finds nothing, a second
    pass waits for them, so a set with free slots never answers "nothing left" only
    because someone else was claiming at the same moment.
    """
    rejected: list[int] = []
    for skip_locked in (True, False):
        query = _claim_statement(which, skip_locked)
        for _ in range(max_tries):
            prompt = db.scalar(query, {**params, "rejected": list(rejected)})
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
        if check_slot(
            db, prompt, kind, user.id, ps.overlap, now, exclude_task_id=stale.id, policy_id=stale.policy_id
        ).ok:
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

    chosen: dict[int, tuple[int | None, list[int]]] = {}

    def accept(prompt: Prompt) -> bool:
        # Under the prompt's lock: pick the policy to show first, then recount its slots.
        served: tuple[int | None, list[int]] | None = (None, [])
        if kind == "rank":
            served = served_completions(db, prompt, ps.k)
            if served is None:
                return False
        if not check_slot(db, prompt, kind, user.id, ps.overlap, now, policy_id=served[0]).ok:
            return False
        chosen[prompt.id] = served
        return True

    params = {"ps_id": ps.id, "ps_k": ps.k, "ps_overlap": ps.overlap, "labeler_id": user.id, "now": now}
    prompt: Prompt | None = None
    if kind == "rank" and gold_rate > 0 and rng.random() < gold_rate:
        prompt = _claim_from(db, "gold", params, accept)
    if prompt is None:
        prompt = _claim_from(db, kind, params, accept)
    if prompt is None:
        return None

    policy_id, completion_ids = chosen[prompt.id]
    task = Task(
        prompt_id=prompt.id,
        prompt_set_id=ps.id,
        labeler_id=user.id,
        kind=kind,
        status="leased",
        completion_ids=[],
        policy_id=policy_id,
        lease_expires_at=now + timedelta(minutes=lease_minutes),
        created_at=now,
    )
    db.add(task)
    db.flush()
    ids = list(completion_ids)
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
    check = check_slot(
        db, prompt, task.kind, task.labeler_id, ps.overlap, now, exclude_task_id=task.id, policy_id=task.policy_id
    )
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
    """What this labeler has done in the set and what is left for them right now.

    ``rank_left`` counts the prompts ``next`` could give them now (the served policy's
    pair open to them). ``waiting_for_completions`` counts the prompts whose rank work for
    the deployed policy is open to them but which lack its K ready completions (with no
    policy deployed: prompts where no policy has K).
    """
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
    deployed = db.scalar(select(Policy.id).where(Policy.deployed.is_(True)))
    # One statement for what depends on the served pairs, so they are computed once.
    served = _served_pairs(ps)
    rank_open = _open_prompts(ps, "rank", user.id, now, Prompt.id, served=served).order_by(None)
    rank_left = select(func.count()).select_from(rank_open.subquery()).scalar_subquery()
    regular = [Prompt.prompt_set_id == ps.id, Prompt.is_gold.is_(False)]
    if deployed is None:
        waiting = select(func.count(Prompt.id)).where(*regular, Prompt.id.not_in(select(served.c.prompt_id)))
    else:
        waiting = select(func.count(Prompt.id)).where(
            *regular,
            ~_has_k_ready_of(ps.k, deployed),
            ~_labeler_has("rank", user.id, now, deployed),
            _taken_slots("rank", now, deployed) < ps.overlap,
            Prompt.id.not_in(rank_open),
        )
    # When could a full prompt open up again? The earliest live lease of another labeler
    # on a prompt (rank: on the pair served now) this labeler has not done.
    own = aliased(Task)
    next_expiry = select(func.min(Task.lease_expires_at)).where(
        Task.prompt_set_id == ps.id,
        Task.labeler_id != user.id,
        Task.status == "leased",
        Task.lease_expires_at > now,
        or_(
            Task.kind != "rank",
            exists().where(served.c.prompt_id == Task.prompt_id, served.c.policy_id == Task.policy_id),
        ),
        ~exists().where(
            own.prompt_id == Task.prompt_id,
            own.kind == Task.kind,
            own.policy_id.is_not_distinct_from(Task.policy_id),
            own.labeler_id == user.id,
            keeps_labeler_off(now, own),
        ),
    )
    rank_left_n, waiting_n, next_expiry_at = db.execute(
        select(rank_left, waiting.scalar_subquery(), next_expiry.scalar_subquery())
    ).one()
    demo_open = _open_prompts(ps, "demonstrate", user.id, now, Prompt.id).order_by(None)
    demo_left = db.scalar(select(func.count()).select_from(demo_open.subquery())) or 0
    offers_demos = ps.demonstration_share > 0 or count_prompts(
        Prompt.prompt_set_id == ps.id, Prompt.wants_demonstration.is_(True)
    ) > 0
    return SetProgress(
        prompt_set_id=ps.id,
        name=ps.name,
        status=ps.status,
        ranked=ranked or 0,
        demonstrated=demonstrated or 0,
        skipped=sum(n for (_, status), n in counts.items() if status == "skipped"),
        holding=holding or 0,
        rank_left=rank_left_n or 0,
        demonstrate_left=demo_left,
        waiting_for_completions=waiting_n or 0,
        offers_demonstrations=offers_demos,
        next_lease_expiry=next_expiry_at,
    )


def active_sets(db: Session) -> list[PromptSet]:
    return list(db.scalars(select(PromptSet).where(PromptSet.status == "active").order_by(PromptSet.name)))

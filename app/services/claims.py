"""Claiming a task: which prompt a labeler gets next, race-free on both backends.

The claimer's own live lease comes back first, then a lapsed one whose slot is still free
(app/services/leases.py); otherwise a new task on the first open pair of the slots table
(app/services/slots.py): served now (for ranking: the policy app/services/serving.py
picks, with K ready completions), ``taken < overlap``, and not kept off for this labeler.
Pairs that others have started come first, so overlapping judgements complete, then by
prompt id. Gold prompts are mixed in at ``gold_rate`` and served once per labeler
whatever the policy (a query over the set's gold prompts, which are few).

On PostgreSQL the claimer locks its own user row (so one labeler's parallel requests are
serialised), marks the set's lapsed leases expired, then locks the first open slots row
with ``SELECT ... FOR UPDATE SKIP LOCKED`` and inserts the task; the row's counters are
kept by triggers, so the locked row needs no recount. On SQLite the whole claim is one
``BEGIN IMMEDIATE`` write transaction. Run :func:`next_task` inside
:func:`app.db.transact`.

:func:`open_prompts` is the scanning form of the same rule (it counts tasks per prompt);
claims no longer use it, the consistency test (tests/test_slots_consistency.py) checks
the slots table against it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Integer, Select, bindparam, select
from sqlalchemy.orm import Session

from app.db import is_sqlite
from app.models import TASK_KINDS, Completion, Prompt, PromptSet, Slot, Task, User
from app.models.base import UTCDateTime, utcnow
from app.services import continue_tasks, conversations
from app.services.errors import Invalid
from app.services.leases import lease_until, resume_or_tidy
from app.services.prompt_sets import get_prompt_set, is_serving
from app.services.serving import served_completions, served_pairs
from app.services.slots import check_slot, labeler_has, open_slot_statement, taken_slots
from app.services.task_states import LEASED


def open_prompts(
    ps: PromptSet | Any, kind: str, labeler_id: Any, now: datetime, *columns: Any, served: Any = None
) -> Select[Any]:
    """``select(*columns)`` over the prompts of ``ps`` this labeler can be given a task for
    now (gold prompts aside), in claiming order.

    Rank: joined to the prompt's served (prompt, policy) pair (``served``: the
    :func:`~app.services.serving.served_pairs` of ``ps`` to reuse), which must have a free
    slot the labeler is not kept off. Demonstrate: the prompt wants demonstrations and has
    a free slot the labeler is not kept off.
    """
    if kind == "rank":
        served = served_pairs(ps) if served is None else served
        taken = taken_slots(kind, now, served.c.policy_id)
        query = (
            select(*columns)
            .select_from(Prompt)
            .join(served, served.c.prompt_id == Prompt.id)
            .where(~labeler_has(kind, labeler_id, now, served.c.policy_id))
        )
    else:
        taken = taken_slots(kind, now)
        query = (
            select(*columns)
            .where(Prompt.prompt_set_id == ps.id, Prompt.wants_demonstration.is_(True))
            .where(~labeler_has(kind, labeler_id, now))
        )
    return query.where(taken < ps.overlap).order_by(taken.desc(), Prompt.id)


def _gold_conditions(ps: Any, labeler_id: Any, now: datetime) -> list[ColumnElement[bool]]:
    return [
        Prompt.prompt_set_id == ps.id,
        Prompt.is_gold.is_(True),
        Prompt.gold_ranking.is_not(None),
        ~labeler_has("rank", labeler_id, now),
    ]


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
            base = open_prompts(ps, which, labeler_id, now, Prompt)
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

    One pass, skipping prompts other claimers hold locked: a gold claim that finds nothing
    falls back to a regular claim (gold is mixed in at a rate, not owed), so it need not
    wait for them.
    """
    rejected: list[int] = []
    query = _claim_statement(which, skip_locked=True)
    for _ in range(max_tries):
        prompt = db.scalar(query, {**params, "rejected": list(rejected)})
        if prompt is None:
            return None
        if accept(prompt):
            return prompt
        rejected.append(prompt.id)
    return None


def _claim_open_slot(
    db: Session, kind: str, params: dict[str, Any], k: int, max_tries: int = 20
) -> tuple[int, int | None, list[int]] | None:
    """Lock the first open slots row of this set and kind (app/services/slots.py) and
    return (prompt id, policy id, completion ids) for the new task, or None.

    The row's counters are kept by triggers in the transactions that change them, so the
    locked row is exact: no recount. A rank pair whose K completions are no longer all
    ready (retired by a redeploy in flight) is passed over. First pass skips rows other
    claimers hold locked; when that finds nothing, a second pass waits for them, so a set
    with free slots never answers "nothing left" only because someone else was claiming.
    (SQLite has no row locks and its transaction holds the write lock: one pass.)
    """
    rejected: list[int] = []
    for skip_locked in (False,) if is_sqlite(db) else (True, False):
        for _ in range(max_tries):
            stmt = open_slot_statement(kind, skip_locked)
            if rejected:
                stmt = stmt.where(Slot.__table__.c.prompt_id.not_in(rejected))
            row = db.execute(stmt, params).first()
            if row is None:
                break
            if kind != "rank":
                return row.prompt_id, None, []
            ids = list(db.scalars(_READY, {"prompt_id": row.prompt_id, "policy_id": row.policy_id, "k": k}))
            if len(ids) == k:
                return row.prompt_id, row.policy_id, ids
            rejected.append(row.prompt_id)
    return None


_READY = (
    select(Completion.id)
    .where(
        Completion.prompt_id == bindparam("prompt_id", type_=Integer),
        Completion.policy_id == bindparam("policy_id", type_=Integer),
        Completion.status == "ready",
    )
    .order_by(Completion.id)
    .limit(bindparam("k", type_=Integer))
)


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
    inside :func:`app.db.transact`.
    """
    if kind not in TASK_KINDS:
        raise Invalid(f"kind must be one of {', '.join(TASK_KINDS)}, not {kind!r}")
    now = now or utcnow()
    rng = rng or random.Random()
    ps = get_prompt_set(db, prompt_set_id)
    if kind == "continue" and not conversations.is_conversation(ps):
        raise Invalid(f"prompt set {ps.id} is not a conversation set; continue tasks need one")
    if not is_serving(ps):
        return None
    if not is_sqlite(db):  # (SQLite: the transaction's BEGIN IMMEDIATE serialises everything)
        # Serialise this labeler's own concurrent requests (two tabs, double clicks). Its own
        # statement: a probe folded into it would read a snapshot from before the lock.
        db.execute(select(User.id).where(User.id == user.id).with_for_update(key_share=True))
    held = resume_or_tidy(db, user.id, ps, kind, now, lease_minutes)
    if held is not None:
        return held

    if kind == "continue":  # slots per reply node, against the set's branching limit
        found = continue_tasks.claim_continue(db, ps, user.id, now)
        if found is None:
            return None
        return _new_task(db, ps, user, kind, found[0], None, [], now, lease_minutes, node_id=found[1])

    params = {"ps_id": ps.id, "ps_k": ps.k, "ps_overlap": ps.overlap, "labeler_id": user.id, "now": now}
    claimed: tuple[int, int | None, list[int]] | None = None
    if kind == "rank" and gold_rate > 0 and rng.random() < gold_rate:
        chosen: dict[int, tuple[int | None, list[int]]] = {}

        def accept(prompt: Prompt) -> bool:
            # Under the gold prompt's lock: its fixed completions, and the labeler's own tasks.
            served = served_completions(db, prompt, ps.k)
            if served is None or not check_slot(db, prompt, kind, user.id, ps.overlap, now, policy_id=served[0]).ok:
                return False
            chosen[prompt.id] = served
            return True

        gold = _claim_from(db, "gold", params, accept)
        if gold is not None:
            claimed = (gold.id, *chosen[gold.id])
    if claimed is None:
        claimed = _claim_open_slot(db, kind, params, ps.k)
    if claimed is None:
        return None

    prompt_id, policy_id, completion_ids = claimed
    return _new_task(db, ps, user, kind, prompt_id, policy_id, completion_ids, now, lease_minutes)


def _new_task(
    db: Session,
    ps: PromptSet,
    user: User,
    kind: str,
    prompt_id: int,
    policy_id: int | None,
    completion_ids: list[int],
    now: datetime,
    lease_minutes: float,
    node_id: int | None = None,
) -> Task:
    """Insert the claimed task, leased to ``user``."""
    ids = list(completion_ids)
    # display order: fixed per (labeler, pair), stored with the task
    random.Random(f"task:{user.id}:{prompt_id}:{policy_id}").shuffle(ids)
    task = Task(
        prompt_id=prompt_id,
        prompt_set_id=ps.id,
        labeler_id=user.id,
        kind=kind,
        status=LEASED.value,
        completion_ids=ids,
        policy_id=policy_id,
        node_id=node_id,
        lease_expires_at=lease_until(now, lease_minutes),
        created_at=now,
    )
    db.add(task)
    db.flush()
    return task

"""The policy registry (versions, deploy, failures), reward models, and the sampler's queries.

A policy is a Hugging Face directory under the artifacts dir (``policies/vN``, stored
relative to it). At most one policy is deployed (a partial unique index enforces it);
the sampler serves the deployed one. A policy the sampler cannot load is marked
``failed`` with the error and cannot be deployed again until fixed.

The sampling half of this module answers "which prompts need completions from the
deployed policy" (keeping a bounded buffer of labelable prompts per active set) and
writes the completions; the trainer's sampler (trainer/sampler.py) calls it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import chunks, is_postgres
from app.models import Completion, Policy, Prompt, PromptSet, RewardModel, Task, TaskStatus, User
from app.models.base import utcnow
from app.services import audit, conversations, webhook_events
from app.services.errors import Conflict, Invalid, NotFound
from app.services.prompt_sets import active_prompt_sets as active_prompt_sets  # the sampler's (trainer/sampler.py)
from app.services.slots import rank_slots_used


# ---------------------------------------------------------------------- registry


def list_policies(db: Session) -> list[Policy]:
    """Every policy, newest version first."""
    return list(db.scalars(select(Policy).order_by(Policy.version.desc())))


def get_policy(db: Session, policy_id: int) -> Policy:
    policy = db.get(Policy, policy_id)
    if policy is None:
        raise NotFound(f"policy {policy_id} does not exist")
    return policy


def get_by_version(db: Session, version: int) -> Policy | None:
    return db.scalar(select(Policy).where(Policy.version == version))


def find_policy(db: Session, ref: str) -> Policy:
    """A policy by id (``"3"``) or by version (``"v3"``)."""
    ref = ref.strip()
    if ref[:1] in ("v", "V") and ref[1:].isdigit():
        policy = get_by_version(db, int(ref[1:]))
        if policy is None:
            raise NotFound(f"no policy version {ref}")
        return policy
    if not ref.isdigit():
        raise Invalid(f"{ref!r} is neither a policy id nor a version like v3")
    return get_policy(db, int(ref))


def deployed_policy(db: Session) -> Policy | None:
    return db.scalar(select(Policy).where(Policy.deployed.is_(True)))


def max_version(db: Session) -> int | None:
    return db.scalar(select(func.max(Policy.version)))


def register_policy(
    db: Session,
    *,
    version: int,
    artifact_path: str,
    parent_id: int | None = None,
    metrics: dict[str, Any] | None = None,
    base: str = "",
    training_run_id: int | None = None,
) -> Policy:
    """Add a ready (not deployed) policy row for a checkpoint that is already complete on disk."""
    if get_by_version(db, version) is not None:
        raise Conflict(f"policy version v{version} is already registered")
    policy = Policy(
        version=version,
        artifact_path=artifact_path,
        parent_id=parent_id,
        metrics=metrics or {},
        base=base,
        training_run_id=training_run_id,
        status="ready",
        deployed=False,
    )
    db.add(policy)
    db.flush()
    return policy


def deploy_policy(db: Session, actor: User | None, policy_id: int, *, reason: str | None = None) -> Policy:
    """Make ``policy_id`` the deployed policy (the sampler switches to it within seconds).

    Deploying the deployed policy is a no-op. A failed or retired policy cannot be deployed.
    """
    policy = get_policy(db, policy_id)
    if policy.status != "ready":
        detail = f": {policy.error}" if policy.error else ""
        raise Conflict(f"policy v{policy.version} is {policy.status} and cannot be deployed{detail}")
    if policy.deployed:
        return policy
    current_q = select(Policy).where(Policy.deployed.is_(True))
    if is_postgres(db):
        current_q = current_q.with_for_update()
    previous = db.scalar(current_q)
    try:
        with db.begin_nested():
            if previous is not None:
                previous.deployed = False
                db.flush()
            policy.deployed = True
            policy.deployed_at = utcnow()
            db.flush()
    except IntegrityError as exc:
        raise Conflict("another policy was deployed at the same moment; try again") from exc
    audit.record(
        db,
        actor,
        "policy.deploy",
        "policy",
        policy.id,
        version=policy.version,
        previous_id=previous.id if previous else None,
        **({"reason": reason} if reason else {}),
    )
    webhook_events.policy_deployed(db, actor, policy, previous, reason)
    return policy


def retire_policy(db: Session, actor: User | None, policy_id: int) -> Policy:
    """Mark a policy retired (kept on disk, never deployed again). The deployed one cannot be."""
    policy = get_policy(db, policy_id)
    if policy.deployed:
        raise Conflict(f"policy v{policy.version} is deployed; deploy another one first")
    policy.status = "retired"
    audit.record(db, actor, "policy.retire", "policy", policy.id, version=policy.version)
    db.flush()
    return policy


def mark_failed(db: Session, policy_id: int, error: str) -> Policy:
    """Record that a policy cannot be loaded (the sampler reports this; no actor)."""
    policy = get_policy(db, policy_id)
    policy.status = "failed"
    policy.error = error[:4000]
    db.flush()
    return policy


# ---------------------------------------------------------------- reward models


def max_reward_model_version(db: Session) -> int | None:
    return db.scalar(select(func.max(RewardModel.version)))


def register_reward_model(
    db: Session,
    *,
    version: int,
    artifact_path: str,
    training_run_id: int | None,
    metrics: dict[str, Any] | None = None,
) -> RewardModel:
    rm = RewardModel(
        version=version, artifact_path=artifact_path, training_run_id=training_run_id, metrics=metrics or {}
    )
    db.add(rm)
    db.flush()
    return rm


def latest_reward_model(db: Session) -> RewardModel | None:
    return db.scalar(select(RewardModel).order_by(RewardModel.version.desc()).limit(1))


def list_reward_models(db: Session) -> list[RewardModel]:
    return list(db.scalars(select(RewardModel).order_by(RewardModel.version.desc())))


# ---------------------------------------------------------------------- sampling


@dataclass
class SetPlan:
    """What one active prompt set needs from the sampler right now."""

    prompt_set: PromptSet
    buffer: int  # labelable prompts that already have K ready completions of the policy
    target: int  # settings.buffer_prompts
    prompts: list[tuple[Prompt, int]]  # (prompt, completions it still needs), at most the shortfall

    @property
    def fill(self) -> float:
        return self.buffer / self.target if self.target else 1.0


def _ready_counts(policy_id: int):  # type: ignore[no-untyped-def]
    return (
        select(Completion.prompt_id, func.count(Completion.id).label("n"))
        .where(Completion.policy_id == policy_id, Completion.status == "ready")
        .group_by(Completion.prompt_id)
        .subquery()
    )


def sampling_plan(
    db: Session,
    prompt_set: PromptSet,
    policy_id: int,
    buffer_prompts: int,
    limit: int,
    now: datetime | None = None,
) -> SetPlan:
    """How far the set's buffer is from ``buffer_prompts`` and which prompts to sample next.

    A prompt is *labelable* for ranking while its taken rank slots for ``policy_id`` (the
    deployed policy) are below the set's overlap; slots taken on other policies' completions
    do not count, so after a redeploy prompts ranked on the old policy need the new one's.
    It is *in the buffer* when it also has K ready completions of the deployed policy. The
    sampler tops the buffer up to ``buffer_prompts`` (never the whole set at once), at most
    ``limit`` prompts per call, lowest id first. Gold prompts (which show
    their fixed gold completions) need none, and demonstration tasks need no completions,
    so they never wait on the sampler.
    """
    now = now or utcnow()
    k = prompt_set.k
    ready = _ready_counts(policy_id)
    used = rank_slots_used(now, policy_id)
    have = func.coalesce(ready.c.n, 0)
    labelable = (
        select(Prompt, have.label("have"))
        .outerjoin(ready, ready.c.prompt_id == Prompt.id)
        .outerjoin(used, used.c.prompt_id == Prompt.id)
        .where(
            Prompt.prompt_set_id == prompt_set.id,
            Prompt.is_gold.is_(False),
            func.coalesce(used.c.n, 0) < prompt_set.overlap,
        )
    )
    buffer = db.scalar(select(func.count()).select_from(labelable.where(have >= k).subquery())) or 0
    shortfall = max(0, buffer_prompts - buffer)
    rows: list[tuple[Prompt, int]] = []
    if shortfall and limit > 0:
        query = labelable.where(have < k).order_by(Prompt.id).limit(min(shortfall, limit))
        rows = [(prompt, k - int(n)) for prompt, n in db.execute(query)]
    return SetPlan(prompt_set, buffer, buffer_prompts, rows)


def add_completions(
    db: Session, policy_id: int, k_by_prompt: dict[int, int], rows: Iterable[dict[str, Any]]
) -> int:
    """Insert sampled completions, at most K ready ones per (prompt, policy); returns how many.

    NUL characters in the text become U+FFFD. Rechecks under a lock (PostgreSQL: the prompt rows ``FOR UPDATE``) so two samplers that
    sampled the same prompt do not give it 2K completions: the second one's are dropped.
    """
    by_prompt: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_prompt.setdefault(int(row["prompt_id"]), []).append(row)
    if not by_prompt:
        return 0
    ids = sorted(by_prompt)
    if is_postgres(db):
        # FOR NO KEY UPDATE: two samplers serialise, while claims (which hold a slots row
        # and insert a task referencing the prompt) are not blocked by the lock.
        db.execute(
            select(Prompt.id).where(Prompt.id.in_(ids)).order_by(Prompt.id).with_for_update(key_share=True)
        )
    have = dict(
        db.execute(
            select(Completion.prompt_id, func.count(Completion.id))
            .where(
                Completion.prompt_id.in_(ids), Completion.policy_id == policy_id, Completion.status == "ready"
            )
            .group_by(Completion.prompt_id)
        ).all()
    )
    added: list[Completion] = []
    for prompt_id in ids:
        room = k_by_prompt.get(prompt_id, 0) - int(have.get(prompt_id, 0))
        for row in by_prompt[prompt_id][: max(0, room)]:
            # PostgreSQL text cannot hold NUL; a sampled byte-level token can decode to one.
            row = {**row, "text": str(row["text"]).replace("\x00", "\ufffd")}
            completion = Completion(policy_id=policy_id, status="ready", **row)
            db.add(completion)
            added.append(completion)
    db.flush()
    conversations.add_sampled_replies(db, added)  # replies to conversation contexts join their tree
    return len(added)


def retire_unlabeled_completions(db: Session, keep_policy_id: int) -> int:
    """Retire ready completions of other policies that no labeler holds or has ranked.

    Completions shown in a leased or submitted task stay ready (leases already handed out
    stay valid); gold prompts keep theirs. Returns how many were retired.
    """
    candidates = db.execute(
        select(Completion.id, Completion.prompt_id)
        .join(Prompt, Prompt.id == Completion.prompt_id)
        .where(
            Completion.status == "ready",
            Completion.policy_id != keep_policy_id,
            Prompt.is_gold.is_(False),
        )
    ).all()
    if not candidates:
        return 0
    prompt_ids = sorted({prompt_id for _, prompt_id in candidates})
    protected: set[int] = set()
    for chunk in chunks(prompt_ids):
        for completion_ids in db.scalars(
            select(Task.completion_ids).where(
                Task.prompt_id.in_(chunk), Task.status.in_((TaskStatus.LEASED, TaskStatus.SUBMITTED))
            )
        ):
            protected.update(int(c) for c in completion_ids or [])
    retire = [cid for cid, _ in candidates if cid not in protected]
    for chunk in chunks(retire):
        db.execute(
            update(Completion)
            .where(Completion.id.in_(chunk), Completion.status == "ready")
            .values(status="retired")
            .execution_options(synchronize_session=False)
        )
    return len(retire)

"""Evaluations: blind human comparison of policy versions (docs/evaluations.md).

Creating an evaluation picks its prompts (the chosen split of the named sets, optionally
narrowed to an explicit list and capped at ``max_prompts``), and lays out its comparison
slots: every prompt x every pair of policies x ``per_pair``, in a seeded random order, with
the side policy x shows first balanced over each pair's slots.

Samples: each slot needs sample ``sample_index`` of both policies for its prompt
(:class:`~app.models.EvaluationSample`). When some are missing the evaluation starts in
status ``sampling`` and the worker's sampler writes them (trainer/eval_sampler.py), with
the prompt set's sampling settings and a recorded seed, then makes it ``active``; an
evaluation whose samples all exist (shared with earlier evaluations) is ``active`` at once.
Compare tasks are served only while it is ``active``.

Reading an evaluation (its leaderboard, the human verdict, the judgments export) is
app/services/evaluation_reads.py; its names are re-exported here.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from itertools import combinations
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import (
    CompareTask,
    ComparisonJudgment,
    Completion,
    Evaluation,
    EvaluationComparison,
    EvaluationSample,
    Policy,
    Prompt,
    PromptSet,
    Task,
    User,
)
from app.models.base import utcnow
from app.models.evaluations import EVALUATION_STATUSES, OUTCOMES
from app.services import audit, webhook_events
from app.services.errors import Conflict, Invalid, NotFound
from app.services.evaluation_reads import (
    games,
    get_evaluation,
    gold_accuracy,
    judgment_records,
    leaderboard_view,
    list_evaluations,
    policy_labels,
    policy_verdicts,
    verdict,
)
from app.services.tasks import takes_slot

__all__ = [
    "MAX_COMPARISONS", "SPLIT_CHOICES", "add_samples", "create_evaluation", "evaluation_view",
    "evaluations_to_sample", "missing_samples", "refresh_status", "set_gold", "set_status", "slots_taken",
    # reads, from evaluation_reads
    "games", "get_evaluation", "gold_accuracy", "judgment_records", "leaderboard_view", "list_evaluations",
    "policy_labels", "policy_verdicts", "verdict",
]

MAX_COMPARISONS = 200_000
SPLIT_CHOICES = ("train", "validation", "all")

_ = Completion  # evaluation samples are never Completion rows (those are served for ranking)


def _check_policies(db: Session, policy_ids: Sequence[int]) -> list[Policy]:
    ids = list(dict.fromkeys(int(p) for p in policy_ids))
    if len(ids) < 2:
        raise Invalid("an evaluation compares at least two different policies (policy_ids)")
    found = {p.id: p for p in db.scalars(select(Policy).where(Policy.id.in_(ids)))}
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFound(f"policy {', '.join(map(str, missing))} does not exist")
    bad = [f"v{found[i].version} is {found[i].status}" for i in ids if found[i].status != "ready"]
    if bad:
        raise Invalid(f"only ready policies can be evaluated: {'; '.join(bad)}")
    return [found[i] for i in ids]


def _select_prompts(
    db: Session,
    prompt_set_ids: Sequence[int],
    split: str,
    prompt_ids: Sequence[int] | None,
    max_prompts: int | None,
    rng: random.Random,
) -> list[int]:
    set_ids = list(dict.fromkeys(int(s) for s in prompt_set_ids))
    if not set_ids and not prompt_ids:
        raise Invalid("name the prompt source: prompt_set_ids (and a split), or prompt_ids")
    known = set(db.scalars(select(PromptSet.id).where(PromptSet.id.in_(set_ids))))
    missing = [s for s in set_ids if s not in known]
    if missing:
        raise NotFound(f"prompt set {', '.join(map(str, missing))} does not exist")
    query = select(Prompt.id).where(Prompt.is_gold.is_(False)).order_by(Prompt.id)
    if set_ids:
        query = query.where(Prompt.prompt_set_id.in_(set_ids))
    if split != "all":
        query = query.where(Prompt.split == split)
    if prompt_ids:
        wanted = list(dict.fromkeys(int(p) for p in prompt_ids))
        query = query.where(Prompt.id.in_(wanted))
    ids = list(db.scalars(query))
    if prompt_ids and len(ids) < len(set(prompt_ids)):
        raise Invalid(
            "some prompt_ids are not regular prompts of the named sets and split "
            f"({len(set(prompt_ids)) - len(ids)} left over)"
        )
    if not ids:
        where = f"the {split} split of set(s) {', '.join(map(str, set_ids))}" if split != "all" else "those sets"
        raise Invalid(
            f"no prompts in {where}; import prompts with \"split\": \"{split if split != 'all' else 'validation'}\" first"
        )
    if max_prompts is not None and len(ids) > max_prompts:
        ids = sorted(rng.sample(ids, max_prompts))
    return ids


def create_evaluation(
    db: Session,
    actor: User | None,
    *,
    name: str,
    policy_ids: Sequence[int],
    prompt_set_ids: Sequence[int] = (),
    split: str = "validation",
    prompt_ids: Sequence[int] | None = None,
    max_prompts: int | None = None,
    per_pair: int = 1,
    overlap: int = 1,
    description: str = "",
    guidelines: str = "",
    seed: int | None = None,
) -> Evaluation:
    """Create an evaluation and its comparison slots; status ``active`` when every sample
    exists, else ``sampling`` (the sampler is asked to write them)."""
    name = (name or "").strip()
    if not name or len(name) > 128:
        raise Invalid("name must be 1 to 128 characters")
    if db.scalar(select(Evaluation.id).where(Evaluation.name == name)) is not None:
        raise Conflict(f"an evaluation named {name!r} already exists")
    if split not in SPLIT_CHOICES:
        raise Invalid(f"split must be one of {', '.join(SPLIT_CHOICES)}, not {split!r}")
    if not 1 <= per_pair <= 20:
        raise Invalid("per_pair (comparisons per prompt and pair) must be 1 to 20")
    if not 1 <= overlap <= 50:
        raise Invalid("overlap (labelers per comparison) must be 1 to 50")
    if max_prompts is not None and max_prompts < 1:
        raise Invalid("max_prompts must be at least 1")
    seed = random.SystemRandom().randrange(2**31) if seed is None else int(seed) % 2**31
    rng = random.Random(seed)
    policies = _check_policies(db, policy_ids)
    prompts = _select_prompts(db, prompt_set_ids, split, prompt_ids, max_prompts, rng)
    pairs = list(combinations(sorted(p.id for p in policies), 2))
    total = len(prompts) * len(pairs) * per_pair
    if total > MAX_COMPARISONS:
        raise Invalid(f"that is {total:,} comparisons (at most {MAX_COMPARISONS:,}); set max_prompts")
    ev = Evaluation(
        name=name,
        description=description or "",
        guidelines=guidelines or "",
        policy_ids=[p.id for p in policies],
        prompt_set_ids=list(dict.fromkeys(int(s) for s in prompt_set_ids)),
        split=None if split == "all" else split,
        prompt_ids=list(prompt_ids or []),
        per_pair=per_pair,
        overlap=overlap,
        status="sampling",
        seed=seed,
        created_by_id=actor.id if actor else None,
    )
    db.add(ev)
    db.flush()
    slots: list[EvaluationComparison] = []
    for x, y in pairs:
        n = len(prompts) * per_pair
        sides = [i % 2 == 0 for i in range(n)]  # x first in half of the pair's slots
        rng.shuffle(sides)
        cells = [(p, k) for p in prompts for k in range(per_pair)]
        slots.extend(
            EvaluationComparison(
                evaluation_id=ev.id, prompt_id=p, policy_x_id=x, policy_y_id=y, sample_index=k, x_first=first
            )
            for (p, k), first in zip(cells, sides, strict=True)
        )
    rng.shuffle(slots)  # claim order follows ids: pairs and prompts interleaved
    db.add_all(slots)
    db.flush()
    refresh_status(db, ev)
    audit.record(
        db, actor, "evaluation.create", "evaluation", ev.id, name=name, policy_ids=ev.policy_ids,
        comparisons=total, status=ev.status,
    )
    db.flush()
    return ev


# --- samples --------------------------------------------------------------------------


def missing_samples(db: Session, ev: Evaluation) -> list[tuple[int, int, list[int]]]:
    """(prompt id, policy id, missing sample indexes) the evaluation's slots still need."""
    prompt_ids = select(EvaluationComparison.prompt_id).where(EvaluationComparison.evaluation_id == ev.id)
    have: dict[tuple[int, int], set[int]] = defaultdict(set)
    for prompt_id, policy_id, index in db.execute(
        select(EvaluationSample.prompt_id, EvaluationSample.policy_id, EvaluationSample.sample_index).where(
            EvaluationSample.prompt_id.in_(prompt_ids), EvaluationSample.policy_id.in_(ev.policy_ids)
        )
    ):
        have[(prompt_id, policy_id)].add(index)
    out = []
    for prompt_id in sorted(set(db.scalars(prompt_ids.distinct()))):
        for policy_id in ev.policy_ids:
            gaps = [k for k in range(ev.per_pair) if k not in have[(prompt_id, policy_id)]]
            if gaps:
                out.append((prompt_id, policy_id, gaps))
    return out


def refresh_status(db: Session, ev: Evaluation) -> Evaluation:
    """``sampling`` -> ``active`` once every sample exists (and back when one is missing)."""
    if ev.status in ("sampling", "active"):
        ev.status = "sampling" if missing_samples(db, ev) else "active"
    return ev


def add_samples(db: Session, rows: Iterable[dict[str, Any]]) -> int:
    """Insert evaluation samples (``prompt_id``, ``policy_id``, ``sample_index``, ``text``,
    ``seed``, ``params``, ...), skipping any (prompt, policy, index) that exists; returns
    how many were written."""
    added = 0
    for row in rows:
        exists = db.scalar(
            select(EvaluationSample.id).where(
                EvaluationSample.prompt_id == row["prompt_id"],
                EvaluationSample.policy_id == row["policy_id"],
                EvaluationSample.sample_index == row["sample_index"],
            )
        )
        if exists is None:
            db.add(EvaluationSample(**{**row, "text": str(row["text"]).replace("\x00", "\ufffd")}))
            added += 1
    db.flush()
    return added


def evaluations_to_sample(db: Session) -> list[Evaluation]:
    return list(db.scalars(select(Evaluation).where(Evaluation.status == "sampling").order_by(Evaluation.id)))


# --- admin actions ----------------------------------------------------------------------


def set_status(db: Session, actor: User | None, ev: Evaluation, status: str) -> Evaluation:
    """Pause, resume or close an evaluation (``sampling`` is the sampler's to end)."""
    if status not in EVALUATION_STATUSES or status == "sampling":
        raise Invalid(f"status must be active, paused or closed, not {status!r}")
    if ev.status == "sampling" and status == "active":
        raise Conflict("the evaluation is still waiting for its samples; it opens by itself when they exist")
    if ev.status == "sampling" and status == "paused":
        raise Conflict("the evaluation is still waiting for its samples")
    ev.status = status
    audit.record(db, actor, "evaluation.status", "evaluation", ev.id, status=status)
    db.flush()
    if status == "closed":  # closing a round's evaluation gives its verdict with the judgments so far
        from app.services import human_gate

        human_gate.settle(db, ev.id)
        webhook_events.evaluation_closed(db, ev)
    return ev


def set_gold(db: Session, actor: User | None, comparison_id: int, outcome: str | None) -> EvaluationComparison:
    """Make a comparison gold with its reference ``outcome`` (x, y, tie, both_bad; x is
    the policy with the lower id), or clear it with None. Gold comparisons are served at
    the gold rate, not limited by overlap, and left out of the leaderboard."""
    comparison = db.get(EvaluationComparison, comparison_id)
    if comparison is None:
        raise NotFound(f"comparison {comparison_id} not found")
    if outcome is not None and outcome not in OUTCOMES:
        raise Invalid(f"gold outcome must be one of {', '.join(OUTCOMES)}")
    comparison.gold_outcome = outcome
    audit.record(db, actor, "evaluation.gold", "comparison", comparison.id, outcome=outcome)
    db.flush()
    return comparison


# --- views ------------------------------------------------------------------------------


def evaluation_view(db: Session, ev: Evaluation) -> dict[str, Any]:
    """The EvaluationOut shape: settings, status and progress counts (admin-facing)."""
    now = utcnow()
    regular = [EvaluationComparison.evaluation_id == ev.id, EvaluationComparison.gold_outcome.is_(None)]
    comparisons = db.scalar(select(func.count(EvaluationComparison.id)).where(*regular)) or 0
    prompts = db.scalar(
        select(func.count(func.distinct(EvaluationComparison.prompt_id))).where(
            EvaluationComparison.evaluation_id == ev.id
        )
    ) or 0
    judgments = db.scalar(
        select(func.count(ComparisonJudgment.id)).where(
            ComparisonJudgment.evaluation_id == ev.id, ComparisonJudgment.status == "active"
        )
    ) or 0
    leased = db.scalar(
        select(func.count(Task.id))
        .join(CompareTask, CompareTask.task_id == Task.id)
        .where(CompareTask.evaluation_id == ev.id, Task.status == "leased", Task.lease_expires_at > now)
    ) or 0
    labels = policy_labels(db, ev.policy_ids)
    missing = sum(len(gaps) for _, _, gaps in missing_samples(db, ev)) if ev.status == "sampling" else 0
    return {
        "id": ev.id,
        "name": ev.name,
        "description": ev.description,
        "guidelines": ev.guidelines,
        "policy_ids": list(ev.policy_ids),
        "policies": [{"id": pid, "label": labels.get(pid, str(pid))} for pid in ev.policy_ids],
        "prompt_set_ids": list(ev.prompt_set_ids),
        "split": ev.split or "all",
        "per_pair": ev.per_pair,
        "overlap": ev.overlap,
        "status": ev.status,
        "seed": ev.seed,
        "prompts": prompts,
        "comparisons": comparisons,
        "slots": comparisons * ev.overlap,
        "judgments": judgments,
        "leased": leased,
        "missing_samples": missing,
        "training_run_id": ev.training_run_id,
        "created_at": ev.created_at,
    }


def slots_taken(db: Session, comparison_id: int, now: Any) -> int:
    """Slots of a comparison that tasks hold: submitted, or leased and live."""
    return db.scalar(
        select(func.count(Task.id))
        .join(CompareTask, CompareTask.task_id == Task.id)
        .where(CompareTask.comparison_id == comparison_id, takes_slot(now))
    ) or 0

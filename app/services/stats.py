"""Progress and quality numbers for the dashboard and ``GET /api/v1/stats``.

The ranking arithmetic (pairs, agreement, Kendall tau, accuracy against gold) is in
app/services/rankings.py; its names are re-exported here. Rank slots are counted by
app/services/slots.py. A Kendall tau that is undefined is left out of the means.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from app.models import Completion, Demonstration, Prompt, PromptSet, Ranking, SubmissionStatus, Task, TaskStatus, User
from app.models.prompts import SPLITS
from app.services.rankings import (
    PairCompare,
    RankingGroups,
    compare_rankings,
    gold_agreement,
    ordered_pairs,
    pair_count,
    pairs_from_ranking,
    positions,
)
from app.services.slots import filled_rank_slots

__all__ = [  # the ranking arithmetic is re-exported for callers that found it here
    "PairCompare",
    "compare_rankings",
    "gold_agreement",
    "labeler_stats",
    "ordered_pairs",
    "pair_count",
    "pairs_from_ranking",
    "positions",
    "progress",
    "summary",
]


# ---------------------------------------------------------------- progress


@dataclass
class SplitProgress:
    prompts: int = 0
    prompts_ready: int = 0  # prompts with at least K ready completions
    prompts_labeled: int = 0  # prompts with at least one active ranking
    rankings: int = 0
    comparisons: int = 0  # pairs implied by the active rankings
    demonstrations: int = 0
    skips: int = 0
    gold: int = 0
    slots: int = 0  # prompts x overlap: rankings the set asks for (of the deployed policy)
    # active rankings of the deployed policy's completions, up to overlap per prompt (gold
    # prompts: of any policy; nothing deployed: the policy with the most, per prompt)
    slots_filled: int = 0

    @property
    def fraction(self) -> float:
        return self.slots_filled / self.slots if self.slots else 0.0

    def add(self, other: SplitProgress) -> None:
        for key in self.__dataclass_fields__:
            setattr(self, key, getattr(self, key) + getattr(other, key))


@dataclass
class SetProgress:
    prompt_set_id: int
    name: str
    status: str
    k: int
    overlap: int
    splits: dict[str, SplitProgress] = field(default_factory=lambda: {s: SplitProgress() for s in SPLITS})

    @property
    def total(self) -> SplitProgress:
        t = SplitProgress()
        for p in self.splits.values():
            t.add(p)
        return t

    def as_dict(self) -> dict[str, Any]:
        def one(p: SplitProgress) -> dict[str, Any]:
            return {**asdict(p), "fraction": round(p.fraction, 4)}

        return {
            "prompt_set_id": self.prompt_set_id,
            "name": self.name,
            "status": self.status,
            "k": self.k,
            "overlap": self.overlap,
            "splits": {s: one(p) for s, p in self.splits.items()},
            "total": one(self.total),
        }


def progress(db: Session, prompt_set_id: int | None = None) -> list[SetProgress]:
    """Counts per set and split. Comparisons are summed from the active rankings' groups."""
    sets_q = select(PromptSet).order_by(PromptSet.id)
    if prompt_set_id is not None:
        sets_q = sets_q.where(PromptSet.id == prompt_set_id)
    sets = {ps.id: SetProgress(ps.id, ps.name, ps.status, ps.k, ps.overlap) for ps in db.scalars(sets_q)}
    if not sets:
        return []
    ids = list(sets)

    def bucket(set_id: int, split: str) -> SplitProgress:
        return sets[set_id].splits.setdefault(split, SplitProgress())

    for set_id, split, n, gold in db.execute(
        select(
            Prompt.prompt_set_id,
            Prompt.split,
            func.count(Prompt.id),
            func.sum(case((Prompt.is_gold.is_(True), 1), else_=0)),
        )
        .where(Prompt.prompt_set_id.in_(ids))
        .group_by(Prompt.prompt_set_id, Prompt.split)
    ):
        b = bucket(set_id, split)
        b.prompts, b.gold = n, int(gold or 0)
        b.slots = n * sets[set_id].overlap

    ready = (
        select(Completion.prompt_id, func.count(Completion.id).label("n"))
        .where(Completion.status == "ready")
        .group_by(Completion.prompt_id)
        .subquery()
    )
    for set_id, split, n in db.execute(
        select(Prompt.prompt_set_id, Prompt.split, func.count(Prompt.id))
        .join(ready, ready.c.prompt_id == Prompt.id)
        .join(PromptSet, PromptSet.id == Prompt.prompt_set_id)
        .where(Prompt.prompt_set_id.in_(ids), ready.c.n >= PromptSet.k)
        .group_by(Prompt.prompt_set_id, Prompt.split)
    ):
        bucket(set_id, split).prompts_ready = n

    per_prompt = (
        select(Ranking.prompt_id, func.count(Ranking.id).label("n"))
        .where(Ranking.status == SubmissionStatus.ACTIVE)
        .group_by(Ranking.prompt_id)
        .subquery()
    )
    for set_id, split, labeled, n in db.execute(
        select(Prompt.prompt_set_id, Prompt.split, func.count(Prompt.id), func.sum(per_prompt.c.n))
        .join(per_prompt, per_prompt.c.prompt_id == Prompt.id)
        .where(Prompt.prompt_set_id.in_(ids))
        .group_by(Prompt.prompt_set_id, Prompt.split)
    ):
        b = bucket(set_id, split)
        b.prompts_labeled, b.rankings = labeled, int(n or 0)

    per_slot = filled_rank_slots(db, ids)
    for set_id, split, filled in db.execute(
        select(
            Prompt.prompt_set_id,
            Prompt.split,
            func.sum(case((per_slot.c.n > PromptSet.overlap, PromptSet.overlap), else_=per_slot.c.n)),
        )
        .join(per_slot, per_slot.c.prompt_id == Prompt.id)
        .join(PromptSet, PromptSet.id == Prompt.prompt_set_id)
        .group_by(Prompt.prompt_set_id, Prompt.split)
    ):
        bucket(set_id, split).slots_filled = int(filled or 0)

    for set_id, split, n in db.execute(
        select(Prompt.prompt_set_id, Prompt.split, func.count(Demonstration.id))
        .join(Prompt, Prompt.id == Demonstration.prompt_id)
        .where(Prompt.prompt_set_id.in_(ids), Demonstration.status == SubmissionStatus.ACTIVE)
        .group_by(Prompt.prompt_set_id, Prompt.split)
    ):
        bucket(set_id, split).demonstrations = n

    for set_id, split, n in db.execute(
        select(Prompt.prompt_set_id, Prompt.split, func.count(Task.id))
        .join(Prompt, Prompt.id == Task.prompt_id)
        .where(Prompt.prompt_set_id.in_(ids), Task.status == TaskStatus.SKIPPED)
        .group_by(Prompt.prompt_set_id, Prompt.split)
    ):
        bucket(set_id, split).skips = n

    rows = db.execute(
        select(Prompt.prompt_set_id, Prompt.split, Ranking.ranking)
        .join(Prompt, Prompt.id == Ranking.prompt_id)
        .where(Prompt.prompt_set_id.in_(ids), Ranking.status == SubmissionStatus.ACTIVE)
        .execution_options(yield_per=2000)
    )
    for set_id, split, groups in rows:
        bucket(set_id, split).comparisons += pair_count(groups or [])
    return list(sets.values())


# ---------------------------------------------------------------- labelers


@dataclass
class LabelerStats:
    user_id: int
    username: str
    role: str
    is_active: bool
    rankings: int = 0
    demonstrations: int = 0
    requeued: int = 0
    skips: int = 0
    tasks: int = 0
    median_seconds: float | None = None
    skip_rate: float | None = None
    pairwise_agreement: float | None = None
    agreement_pairs: int = 0
    kendall_tau: float | None = None
    shared_rankings: int = 0  # ranking pairs with another labeler on the same prompt
    gold_accuracy: float | None = None
    gold_pairs: int = 0
    gold_rankings: int = 0
    last_active_at: datetime | None = None

    @property
    def submissions(self) -> int:
        return self.rankings + self.demonstrations + self.requeued

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "submissions": self.submissions}


@dataclass
class _Acc:
    agree: int = 0
    comparable: int = 0
    taus: list[float] = field(default_factory=list)
    pairs: int = 0


def _latest(*values: datetime | None) -> datetime | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def labeler_stats(db: Session, prompt_set_id: int | None = None) -> tuple[list[LabelerStats], dict[str, Any]]:
    """One row per labeler (and per admin who labeled), plus the overall agreement summary."""
    people: dict[int, LabelerStats] = {}
    for u in db.scalars(select(User).order_by(User.id)):
        people[u.id] = LabelerStats(u.id, u.username, u.role, u.is_active, last_active_at=u.last_active_at)

    def in_set(query, prompt_col):  # type: ignore[no-untyped-def]
        if prompt_set_id is None:
            return query
        return query.join(Prompt, Prompt.id == prompt_col).where(Prompt.prompt_set_id == prompt_set_id)

    for model, attr in ((Ranking, "rankings"), (Demonstration, "demonstrations")):
        q = select(model.labeler_id, model.status, func.count(model.id), func.max(model.created_at)).group_by(
            model.labeler_id, model.status
        )
        for uid, status, n, last in db.execute(in_set(q, model.prompt_id)):
            s = people.get(uid)
            if s is None:
                continue
            if status == SubmissionStatus.ACTIVE:
                setattr(s, attr, getattr(s, attr) + n)
            else:
                s.requeued += n
            s.last_active_at = _latest(s.last_active_at, last)

    task_q = select(Task.labeler_id, Task.status, func.count(Task.id)).group_by(Task.labeler_id, Task.status)
    if prompt_set_id is not None:
        task_q = task_q.where(Task.prompt_set_id == prompt_set_id)
    done: dict[int, int] = defaultdict(int)
    for uid, status, n in db.execute(task_q):
        s = people.get(uid)
        if s is None:
            continue
        s.tasks += n
        if status == TaskStatus.SKIPPED:
            s.skips += n
        if status in (TaskStatus.SKIPPED, TaskStatus.SUBMITTED, TaskStatus.REQUEUED):
            done[uid] += n
    for uid, n in done.items():
        if n:
            people[uid].skip_rate = people[uid].skips / n

    times: dict[int, list[float]] = defaultdict(list)
    for model in (Ranking, Demonstration):
        q = (
            select(model.labeler_id, model.time_spent_s, Task.created_at, Task.submitted_at)
            .outerjoin(Task, Task.id == model.task_id)
            .execution_options(yield_per=5000)
        )
        for uid, spent, started, submitted in db.execute(in_set(q, model.prompt_id)):
            if spent is None and started is not None and submitted is not None:
                spent = (submitted - started).total_seconds()
            if spent is not None and spent >= 0:
                times[uid].append(float(spent))
    for uid, values in times.items():
        if uid in people and values:
            people[uid].median_seconds = statistics.median(values)

    overall = _agreement(db, people, prompt_set_id)
    _gold(db, people, prompt_set_id)

    rows = [
        s for s in people.values() if s.role == "labeler" or s.submissions or s.tasks
    ]
    return rows, overall


def _agreement(db: Session, people: dict[int, LabelerStats], prompt_set_id: int | None) -> dict[str, Any]:
    shared = select(Ranking.prompt_id).where(Ranking.status == SubmissionStatus.ACTIVE)
    if prompt_set_id is not None:
        shared = shared.join(Prompt, Prompt.id == Ranking.prompt_id).where(Prompt.prompt_set_id == prompt_set_id)
    shared = shared.group_by(Ranking.prompt_id).having(func.count(func.distinct(Ranking.labeler_id)) > 1)
    rows = db.execute(
        select(Ranking.prompt_id, Ranking.labeler_id, Ranking.ranking)
        .where(Ranking.status == SubmissionStatus.ACTIVE, Ranking.prompt_id.in_(shared))
        .order_by(Ranking.prompt_id, Ranking.id)
        .execution_options(yield_per=2000)
    )
    acc: dict[int, _Acc] = defaultdict(_Acc)
    total = _Acc()

    def flush(group: list[tuple[int, RankingGroups]]) -> None:
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                (ua, ra), (ub, rb) = group[i], group[j]
                if ua == ub:
                    continue
                c = compare_rankings(ra, rb)
                total.agree += c.agree
                total.comparable += c.comparable
                total.pairs += 1
                if c.tau is not None:
                    total.taus.append(c.tau)
                for u in (ua, ub):
                    a = acc[u]
                    a.agree += c.agree
                    a.comparable += c.comparable
                    a.pairs += 1
                    if c.tau is not None:
                        a.taus.append(c.tau)

    current: int | None = None
    group: list[tuple[int, RankingGroups]] = []
    for prompt_id, uid, groups in rows:
        if prompt_id != current:
            flush(group)
            current, group = prompt_id, []
        group.append((uid, groups or []))
    flush(group)

    for uid, a in acc.items():
        s = people.get(uid)
        if s is None:
            continue
        s.agreement_pairs = a.comparable
        s.shared_rankings = a.pairs
        s.pairwise_agreement = a.agree / a.comparable if a.comparable else None
        s.kendall_tau = statistics.fmean(a.taus) if a.taus else None
    return {
        "pairwise_agreement": total.agree / total.comparable if total.comparable else None,
        "agreement_pairs": total.comparable,
        "kendall_tau": statistics.fmean(total.taus) if total.taus else None,
        "ranking_pairs": total.pairs,
    }


def _gold(db: Session, people: dict[int, LabelerStats], prompt_set_id: int | None) -> None:
    q = (
        select(Ranking.labeler_id, Ranking.ranking, Prompt.gold_ranking)
        .join(Prompt, Prompt.id == Ranking.prompt_id)
        .where(Ranking.status == SubmissionStatus.ACTIVE, Prompt.is_gold.is_(True))
        .execution_options(yield_per=2000)
    )
    if prompt_set_id is not None:
        q = q.where(Prompt.prompt_set_id == prompt_set_id)
    correct: dict[int, int] = defaultdict(int)
    for uid, groups, gold in db.execute(q):
        s = people.get(uid)
        if s is None or not gold:
            continue
        ok, total = gold_agreement(gold, groups or [])
        correct[uid] += ok
        s.gold_pairs += total
        s.gold_rankings += 1
    for uid, s in people.items():
        if s.gold_pairs:
            s.gold_accuracy = correct[uid] / s.gold_pairs


def summary(db: Session, prompt_set_id: int | None = None) -> dict[str, Any]:
    """Everything ``GET /api/v1/stats`` answers: progress per set and split, labelers, agreement."""
    labelers, agreement = labeler_stats(db, prompt_set_id)
    return {
        "prompt_sets": [p.as_dict() for p in progress(db, prompt_set_id)],
        "labelers": [s.as_dict() for s in labelers],
        "agreement": agreement,
    }

"""Per-labeler numbers: submissions, skips, time per task, agreement with other labelers
(pairwise and Kendall tau) and accuracy on gold prompts.

The ranking arithmetic is in app/services/rankings.py. A Kendall tau that is undefined
is left out of the means.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Demonstration, Prompt, Ranking, SubmissionStatus, Task, TaskStatus, User
from app.services.rankings import PairCompare, RankingGroups, compare_rankings, gold_agreement


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
    """Agreement summed over ranking pairs."""

    agree: int = 0
    comparable: int = 0
    taus: list[float] = field(default_factory=list)
    pairs: int = 0

    def add(self, c: PairCompare) -> None:
        self.agree += c.agree
        self.comparable += c.comparable
        self.pairs += 1
        if c.tau is not None:
            self.taus.append(c.tau)


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
                for a in (total, acc[ua], acc[ub]):
                    a.add(c)

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

"""Labeling progress per prompt set and split: prompts, ready prompts, rankings, the
comparisons they imply, demonstrations, skips, gold prompts and filled rank slots.

Rank slots are counted by app/services/slots.py; pairs by app/services/rankings.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session

from app.models import Completion, Demonstration, Prompt, PromptSet, Ranking, SubmissionStatus, Task, TaskStatus
from app.models.prompts import SPLITS
from app.services.rankings import pair_count
from app.services.slots import filled_rank_slots


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

    for attr, query in (
        ("demonstrations", _count_per_split(Demonstration, Demonstration.status == SubmissionStatus.ACTIVE, ids)),
        ("skips", _count_per_split(Task, Task.status == TaskStatus.SKIPPED, ids)),
    ):
        for set_id, split, n in db.execute(query):
            setattr(bucket(set_id, split), attr, n)

    rows = db.execute(
        select(Prompt.prompt_set_id, Prompt.split, Ranking.ranking)
        .join(Prompt, Prompt.id == Ranking.prompt_id)
        .where(Prompt.prompt_set_id.in_(ids), Ranking.status == SubmissionStatus.ACTIVE)
        .execution_options(yield_per=2000)
    )
    for set_id, split, groups in rows:
        bucket(set_id, split).comparisons += pair_count(groups or [])
    return list(sets.values())


def _count_per_split(model: Any, condition: Any, set_ids: list[int]) -> Select:
    """``(prompt_set_id, split, count)`` of ``model`` rows (with a ``prompt_id``) meeting
    ``condition``, per set and split."""
    return (
        select(Prompt.prompt_set_id, Prompt.split, func.count(model.id))
        .join(Prompt, Prompt.id == model.prompt_id)
        .where(Prompt.prompt_set_id.in_(set_ids), condition)
        .group_by(Prompt.prompt_set_id, Prompt.split)
    )

"""A round's data: the snapshot taken when it starts, and the stage inputs built from it.

The snapshot fixes the ids of the *active* rankings and demonstrations of the round's
prompt sets created before the run started, and the train/validation prompts of those
sets, and stores them with counts and a sha256 in ``TrainingRun.snapshot``. Everything
the stages train on is read back by those ids, so labeling that goes on meanwhile (new
rankings, an admin requeueing a labeler's work) changes nothing in a running round, and a
retried run trains on exactly the same data. Gold prompts are never training data. A
red-team set (app/services/red_team.py) counts only once an admin promoted it, with what
was labeled by then; in its rankings a reply flagged as failing ranks below every other.

This module reads rows only; it builds the plain dataclasses of trainer.stages.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import chunks
from app.services import red_team
from app.models import (
    DEFAULT_SAMPLING,
    CompareTask,
    ComparisonJudgment,
    Completion,
    Demonstration,
    EvaluationComparison,
    EvaluationSample,
    Policy,
    Prompt,
    PromptSet,
    Ranking,
    SubmissionStatus,
    TrainingRun,
)

logger = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1


def _hash_ids(ids: dict[str, list[int]]) -> str:
    canonical = json.dumps({k: sorted(v) for k, v in sorted(ids.items())}, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _in_sets(prompt_set_ids: list[int]) -> tuple[Any, ...]:
    """The snapshot's prompts: the sets' prompts, gold ones left out."""
    return Prompt.prompt_set_id.in_(prompt_set_ids), Prompt.is_gold.is_(False)


Windows = list[tuple[list[int], datetime]]


def _windows(db: Session, prompt_set_ids: list[int], cutoff: datetime) -> Windows:
    """The snapshot's sets grouped by the time up to which their labels count
    (app/services/red_team.py ``training_cutoffs``): ``cutoff`` for ordinary sets, the
    promotion for a promoted red-team set; a red-team set never promoted is in none."""
    cutoffs = red_team.training_cutoffs(db, prompt_set_ids, cutoff)
    grouped: dict[datetime, list[int]] = {}
    for set_id in prompt_set_ids:
        if set_id in cutoffs:
            grouped.setdefault(cutoffs[set_id], []).append(set_id)
    return [(ids, until) for until, ids in grouped.items()]


def _in_windows(
    windows: Windows, query: Callable[[list[int], datetime], Any], fetch: Callable[[Any], Any]
) -> list[Any]:
    """What ``fetch`` (``db.scalars`` or ``db.execute``) reads of ``query(set_ids, until)``
    for every window, in one sorted list."""
    return sorted(found for set_ids, until in windows for found in fetch(query(set_ids, until)))


def _active_ids(db: Session, model: Any, windows: Windows) -> list[int]:
    """Ids of the active labels (``Ranking`` or ``Demonstration``) on the snapshot's
    prompts, each created by its set's time."""
    return _in_windows(
        windows,
        lambda set_ids, until: select(model.id)
        .join(Prompt, Prompt.id == model.prompt_id)
        .where(*_in_sets(set_ids), model.status == SubmissionStatus.ACTIVE, model.created_at <= until),
        db.scalars,
    )


def take_snapshot(
    db: Session, prompt_set_ids: list[int], cutoff: datetime, *, include_judgments: bool = False
) -> dict[str, Any]:
    """The snapshot dict for ``TrainingRun.snapshot`` (ids, counts, sha256).

    ``include_judgments`` (``rm_include_evaluations``): also the ids of the active
    judgments of human evaluations on the sets' prompts that prefer one side (A or B), gold
    comparisons aside; otherwise evaluations stay held out and the key is absent.
    """
    windows = _windows(db, prompt_set_ids, cutoff)
    rankings = _active_ids(db, Ranking, windows)
    demonstrations = _active_ids(db, Demonstration, windows)
    prompts: dict[str, list[int]] = {"train": [], "validation": []}
    rows = _in_windows(
        windows,
        lambda set_ids, until: select(Prompt.id, Prompt.split).where(*_in_sets(set_ids), Prompt.created_at <= until),
        db.execute,
    )
    for prompt_id, split in rows:
        prompts.setdefault(split, []).append(prompt_id)
    ids = {
        "rankings": rankings,
        "demonstrations": demonstrations,
        "prompts_train": prompts.get("train", []),
        "prompts_validation": prompts.get("validation", []),
    }
    if include_judgments:
        ids["judgments"] = _in_windows(
            windows,
            lambda set_ids, until: select(ComparisonJudgment.id)
            .join(Prompt, Prompt.id == ComparisonJudgment.prompt_id)
            .join(EvaluationComparison, EvaluationComparison.id == ComparisonJudgment.comparison_id)
            .where(
                *_in_sets(set_ids),
                ComparisonJudgment.status == "active",
                ComparisonJudgment.choice.in_(("a", "b")),
                ComparisonJudgment.created_at <= until,
                EvaluationComparison.gold_outcome.is_(None),
            ),
            db.scalars,
        )
    snapshot: dict[str, Any] = {
        "format": SNAPSHOT_FORMAT,
        "taken_at": cutoff.isoformat(),
        "prompt_set_ids": list(prompt_set_ids),
        "counts": {name: len(values) for name, values in ids.items()},
        "sha256": _hash_ids(ids),
        "ids": ids,
    }
    red = _red_team_summary(db, prompt_set_ids, windows)
    if red:
        snapshot["red_team"] = red
    return snapshot


def _red_team_summary(db: Session, prompt_set_ids: list[int], windows: Windows) -> dict[str, Any] | None:
    """The snapshot's red-team sets: those it trains on with the time their data stops
    (``promoted``), and those left out because no admin promoted them (``left_out``). None
    when the round has no red-team set."""
    left_out = red_team.unpromoted(db, prompt_set_ids)
    promoted = {
        str(set_id): until.isoformat()
        for set_ids, until in windows
        for set_id in set_ids
        if (ps := db.get(PromptSet, set_id)) is not None and red_team.is_red_team(ps)
    }
    if not left_out and not promoted:
        return None
    return {"promoted": promoted, "left_out": left_out}


def round_sampling(db: Session, prompt_set_ids: list[int]) -> dict[str, Any]:
    """The sampling settings the labelers' completions were drawn with: the first set's
    (with the defaults filled in). Rollouts and evaluation use them unless configured."""
    for set_id in prompt_set_ids:
        prompt_set = db.get(PromptSet, set_id)
        if prompt_set is not None:
            return {**DEFAULT_SAMPLING, **(prompt_set.sampling or {})}
    return dict(DEFAULT_SAMPLING)


def verify_snapshot(snapshot: dict[str, Any]) -> None:
    """Raise ValueError when the stored ids do not match the stored hash."""
    ids = snapshot.get("ids") or {}
    if _hash_ids({k: list(v) for k, v in ids.items()}) != snapshot.get("sha256"):
        raise ValueError("the run's data snapshot does not match its sha256")


@dataclass
class RoundData:
    """The stage inputs of a round, split into train and validation."""

    sft_train: list[Any] = field(default_factory=list)  # SFTExample
    sft_val: list[Any] = field(default_factory=list)
    rm_train: list[Any] = field(default_factory=list)  # RankingExample
    rm_val: list[Any] = field(default_factory=list)
    rm_val_source: str = "validation split"
    train_prompts: list[tuple[str | None, list[dict[str, str]] | None]] = field(default_factory=list)
    eval_prompts: list[tuple[str | None, list[dict[str, str]] | None]] = field(default_factory=list)
    rankings_without_pairs: int = 0
    demonstrations_already_trained: int = 0
    evaluation_pairs: int = 0  # rm_train pairs from evaluation judgments (rm_include_evaluations)

    @property
    def demonstrations(self) -> list[Any]:
        return self.sft_train + self.sft_val

    @property
    def rankings(self) -> list[Any]:
        return self.rm_train + self.rm_val


def _prompts_by_id(db: Session, ids: set[int]) -> dict[int, Prompt]:
    found: dict[int, Prompt] = {}
    for chunk in chunks(sorted(ids)):
        for prompt in db.scalars(select(Prompt).where(Prompt.id.in_(chunk))):
            found[prompt.id] = prompt
    return found


def _holdout(item_id: int, fraction: float) -> bool:
    """A deterministic draw from the id: the same rankings are held out on every retry."""
    digest = hashlib.sha256(f"holdout:{item_id}".encode()).hexdigest()
    return int(digest[:8], 16) / 0x1_0000_0000 < fraction


def demonstrations_trained_by(db: Session, policy: Policy) -> set[int]:
    """Ids of the demonstrations SFT already trained on in ``policy``'s lineage.

    Walks from ``policy`` up its parents; every policy registered by a round whose SFT stage
    ran (``"sft"`` in its ``metrics["stages"]``) contributes its run's snapshot of
    demonstrations. A round that starts from ``policy`` and trains on these again would
    fine-tune on the same answers once more each round.
    """
    seen: set[int] = set()
    visited: set[int] = set()
    current: Policy | None = policy
    while current is not None and current.id not in visited:
        visited.add(current.id)
        if "sft" in ((current.metrics or {}).get("stages") or []) and current.training_run_id is not None:
            run = db.get(TrainingRun, current.training_run_id)
            if run is not None:
                seen.update(int(i) for i in ((run.snapshot or {}).get("ids") or {}).get("demonstrations", []))
        current = db.get(Policy, current.parent_id) if current.parent_id is not None else None
    return seen


def load_round_data(
    db: Session,
    snapshot: dict[str, Any],
    *,
    exclude_demonstrations: set[int] | frozenset[int] = frozenset(),
    rm_holdout_fraction: float = 0.1,
    rm_unacceptable: str = "keep",
    max_train_prompts: int | None = None,
    max_eval_prompts: int | None = None,
) -> RoundData:
    """Read the snapshot's rows and build SFT examples, ranking examples and prompt lists.

    Rankings and demonstrations of validation-split prompts are the held-out sets; when no
    ranking is on a validation prompt, a deterministic ``rm_holdout_fraction`` of the train
    rankings is held out instead (when there are at least five), so the RM always reports a
    held-out accuracy when it can. Demonstrations in ``exclude_demonstrations`` (already
    trained on, see :func:`demonstrations_trained_by`) are left out of the SFT examples and
    counted in ``demonstrations_already_trained``.
    """
    from trainer.stages import RankingExample, SFTExample, pairs_from_ranking

    verify_snapshot(snapshot)
    ids = snapshot["ids"]
    data = RoundData()

    demos: list[Demonstration] = []
    for chunk in chunks(list(ids["demonstrations"])):
        demos.extend(db.scalars(select(Demonstration).where(Demonstration.id.in_(chunk))))
    rankings: list[Ranking] = []
    for chunk in chunks(list(ids["rankings"])):
        rankings.extend(db.scalars(select(Ranking).where(Ranking.id.in_(chunk))))
    demos.sort(key=lambda d: d.id)
    rankings.sort(key=lambda r: r.id)

    completion_ids = sorted({int(c) for r in rankings for group in r.ranking for c in group})
    texts: dict[int, str] = {}
    for chunk in chunks(completion_ids):
        texts.update(dict(db.execute(select(Completion.id, Completion.text).where(Completion.id.in_(chunk))).all()))

    prompt_ids = set(ids["prompts_train"]) | set(ids["prompts_validation"])
    prompt_ids |= {d.prompt_id for d in demos} | {r.prompt_id for r in rankings}
    prompts = _prompts_by_id(db, prompt_ids)

    for demo in demos:
        if demo.id in exclude_demonstrations:
            data.demonstrations_already_trained += 1
            continue
        prompt = prompts[demo.prompt_id]
        example = SFTExample(prompt=prompt.text, messages=prompt.messages, completion=demo.text)
        (data.sft_val if prompt.split == "validation" else data.sft_train).append(example)

    red_sets = {int(i) for i in (snapshot.get("red_team") or {}).get("promoted", {})}
    examples: list[tuple[Ranking, Any]] = []
    for ranking in rankings:
        prompt = prompts[ranking.prompt_id]
        groups = ranking.ranking
        if prompt.prompt_set_id in red_sets:  # a failing reply is rejected against every other
            groups = red_team.failing_last(groups, ranking.ratings)
        order = [int(c) for group in groups for c in group]
        if any(c not in texts for c in order):
            logger.warning("ranking %d refers to a missing completion; left out", ranking.id)
            continue
        index = {cid: i for i, cid in enumerate(order)}
        example = RankingExample(
            prompt=prompt.text,
            messages=prompt.messages,
            completions=[texts[c] for c in order],
            ranking=[[index[int(c)] for c in group] for group in groups],
            all_unacceptable=bool(ranking.all_unacceptable),
        )
        if (example.all_unacceptable and rm_unacceptable == "skip") or not pairs_from_ranking(example.ranking):
            data.rankings_without_pairs += 1
            continue
        examples.append((ranking, example))
    for ranking, example in examples:
        (data.rm_val if prompts[ranking.prompt_id].split == "validation" else data.rm_train).append(example)
    if not data.rm_val and len(data.rm_train) >= 5 and rm_holdout_fraction > 0:
        held = [ex for (r, ex) in examples if _holdout(r.id, rm_holdout_fraction)]
        if not held:  # the draw held nothing out: keep the last one back
            held = [examples[-1][1]]
        held_ids = {id(ex) for ex in held}
        data.rm_val = held
        data.rm_train = [ex for ex in data.rm_train if id(ex) not in held_ids]
        data.rm_val_source = f"{len(held)} train rankings held out"

    _add_judgments(db, list(ids.get("judgments") or []), data)

    def as_prompt(prompt_id: int) -> tuple[str | None, list[dict[str, str]] | None]:
        p = prompts[prompt_id]
        return (p.text, p.messages)

    # Rows deleted since the snapshot (a prompt set removed) are simply gone.
    train_ids = [i for i in ids["prompts_train"] if i in prompts]
    val_ids = [i for i in ids["prompts_validation"] if i in prompts]
    if max_train_prompts is not None:
        train_ids = train_ids[:max_train_prompts]
    data.train_prompts = [as_prompt(i) for i in train_ids]
    eval_ids = val_ids or [i for i in ids["prompts_train"] if i in prompts]
    if max_eval_prompts is not None:
        eval_ids = eval_ids[:max_eval_prompts]
    data.eval_prompts = [as_prompt(i) for i in eval_ids]
    return data


def _add_judgments(db: Session, judgment_ids: list[int], data: RoundData) -> None:
    """Evaluation judgments as two-completion rankings (the preferred side first), all in
    ``rm_train`` whatever the prompt's split: the held-out rankings stay the labelers'."""
    from trainer.stages import RankingExample

    for chunk in chunks(judgment_ids):
        rows = db.execute(
            select(ComparisonJudgment.choice, CompareTask.sample_a_id, CompareTask.sample_b_id, Prompt)
            .join(CompareTask, CompareTask.task_id == ComparisonJudgment.task_id)
            .join(Prompt, Prompt.id == ComparisonJudgment.prompt_id)
            .where(ComparisonJudgment.id.in_(chunk))
            .order_by(ComparisonJudgment.id)
        ).all()
        sample_ids = {a for _, a, _, _ in rows} | {b for _, _, b, _ in rows}
        texts = dict(db.execute(select(EvaluationSample.id, EvaluationSample.text).where(EvaluationSample.id.in_(sample_ids))).all())
        for choice, a, b, prompt in rows:
            if a not in texts or b not in texts or choice not in ("a", "b"):
                continue
            chosen, rejected = (texts[a], texts[b]) if choice == "a" else (texts[b], texts[a])
            data.rm_train.append(
                RankingExample(prompt=prompt.text, messages=prompt.messages, completions=[chosen, rejected],
                               ranking=[[0], [1]], all_unacceptable=False)
            )
            data.evaluation_pairs += 1

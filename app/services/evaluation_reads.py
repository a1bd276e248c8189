"""Reading evaluations: the rows, their judgments as games, the leaderboard, the human
verdict on a policy against its parent, and the judgments export.

Nothing here writes. Creating an evaluation, its samples, its status and gold answers are
app/services/evaluations.py (which re-exports these names, so callers import one module);
the leaderboard's statistics (Bradley-Terry, bootstrap intervals, pair counts) are
app/services/leaderboard.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import (
    CompareTask,
    ComparisonJudgment,
    Evaluation,
    EvaluationComparison,
    EvaluationSample,
    Policy,
    Prompt,
    TrainingRun,
    User,
)
from app.services import leaderboard
from app.services.errors import Invalid, NotFound

__all__ = [
    "games", "get_evaluation", "gold_accuracy", "judgment_records", "leaderboard_view", "list_evaluations",
    "policy_labels", "policy_verdicts", "verdict",
]


def get_evaluation(db: Session, evaluation_id: int, *, lock: bool = False) -> Evaluation:
    """The evaluation (locked for update with ``lock``); NotFound when there is none."""
    query = select(Evaluation).where(Evaluation.id == evaluation_id)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    ev = db.scalar(query)
    if ev is None:
        raise NotFound(f"evaluation {evaluation_id} not found")
    return ev


def list_evaluations(db: Session) -> list[Evaluation]:
    """Every evaluation, newest first."""
    return list(db.scalars(select(Evaluation).order_by(Evaluation.id.desc())))


def policy_labels(db: Session, policy_ids: Sequence[int]) -> dict[int, str]:
    """``{policy id: "vN"}`` for the policies of an evaluation."""
    return {pid: f"v{version}" for pid, version in db.execute(select(Policy.id, Policy.version).where(Policy.id.in_(policy_ids)))}


def games(db: Session, evaluation_id: int, *, gold: bool = False) -> list[leaderboard.Game]:
    """The active judgments of an evaluation as leaderboard games (gold comparisons only
    with ``gold``)."""
    query = (
        select(ComparisonJudgment, EvaluationComparison.gold_outcome)
        .join(EvaluationComparison, EvaluationComparison.id == ComparisonJudgment.comparison_id)
        .where(ComparisonJudgment.evaluation_id == evaluation_id, ComparisonJudgment.status == "active")
        .order_by(ComparisonJudgment.id)
    )
    if not gold:
        query = query.where(EvaluationComparison.gold_outcome.is_(None))
    return [
        leaderboard.Game(
            policy_a=j.policy_a_id,
            policy_b=j.policy_b_id,
            choice=j.choice,
            ratings=j.ratings or {},
            comparison_id=j.comparison_id,
            labeler_id=j.labeler_id,
        )
        for j, _ in db.execute(query)
    ]


def gold_accuracy(db: Session, evaluation_id: int) -> dict[str, Any]:
    """Per labeler: judgments of gold comparisons and the share matching the reference."""
    rows = db.execute(
        select(User.username, ComparisonJudgment.outcome, EvaluationComparison.gold_outcome)
        .join(EvaluationComparison, EvaluationComparison.id == ComparisonJudgment.comparison_id)
        .join(User, User.id == ComparisonJudgment.labeler_id)
        .where(
            ComparisonJudgment.evaluation_id == evaluation_id,
            ComparisonJudgment.status == "active",
            EvaluationComparison.gold_outcome.is_not(None),
        )
    ).all()
    per: dict[str, list[bool]] = defaultdict(list)
    for username, outcome, gold_outcome in rows:
        per[username].append(outcome == gold_outcome)
    return {
        "judgments": len(rows),
        "accuracy": (sum(sum(v) for v in per.values()) / len(rows)) if rows else None,
        "labelers": {u: {"judgments": len(v), "accuracy": sum(v) / len(v)} for u, v in sorted(per.items())},
    }


def leaderboard_view(db: Session, ev: Evaluation, *, rounds: int = 200) -> dict[str, Any]:
    """The LeaderboardOut shape (bootstrap seeded with the evaluation's seed)."""
    board = leaderboard.compute(
        games(db, ev.id), ev.policy_ids, rounds=rounds, seed=ev.seed, labels=policy_labels(db, ev.policy_ids)
    )
    return {"evaluation_id": ev.id, "name": ev.name, "status": ev.status, **board, "gold": gold_accuracy(db, ev.id)}


def verdict(
    db: Session, evaluation_id: int, new_policy_id: int, parent_policy_id: int, *, threshold: float = 0.5
) -> dict[str, Any]:
    """The human verdict on ``new_policy_id`` against ``parent_policy_id`` in an evaluation.

    ``win_rate`` is the new policy's share of their head-to-head judgments (ties and
    both-bad count half) with its 95% Wilson interval. ``verdict``: ``better`` when the
    interval's lower end is above ``threshold``, ``worse`` when its upper end is below it,
    ``undecided`` otherwise, ``no_data`` without judgments. ``complete`` says whether every
    slot of the pair has its ``overlap`` judgments. ``at_least_as_good`` is the deploy
    gate's reading: decided ``better``, or complete with ``win_rate >= threshold``.
    """
    ev = get_evaluation(db, evaluation_id)
    for pid in (new_policy_id, parent_policy_id):
        if pid not in ev.policy_ids:
            raise Invalid(f"policy {pid} is not part of evaluation {ev.id}")
    counts = leaderboard.pair_counts(games(db, ev.id), new_policy_id, parent_policy_id)
    x, y = sorted((new_policy_id, parent_policy_id))
    slots = (
        db.scalar(
            select(func.count(EvaluationComparison.id)).where(
                EvaluationComparison.evaluation_id == ev.id,
                EvaluationComparison.policy_x_id == x,
                EvaluationComparison.policy_y_id == y,
                EvaluationComparison.gold_outcome.is_(None),
            )
        )
        or 0
    ) * ev.overlap
    interval = counts["win_rate_interval"]
    if not counts["comparisons"]:
        word = "no_data"
    elif interval[0] > threshold:
        word = "better"
    elif interval[1] < threshold:
        word = "worse"
    else:
        word = "undecided"
    complete = counts["comparisons"] >= slots > 0
    return {
        "evaluation_id": ev.id,
        "new_policy_id": new_policy_id,
        "parent_policy_id": parent_policy_id,
        "threshold": threshold,
        **{k: v for k, v in counts.items() if k not in ("policy_id", "opponent_id")},
        "slots": slots,
        "complete": complete,
        "verdict": word,
        "at_least_as_good": word == "better"
        or (complete and counts["win_rate"] is not None and counts["win_rate"] >= threshold),
    }


# --- export -----------------------------------------------------------------------------


def judgment_records(db: Session, evaluation_id: int, batch: int = 500) -> Iterator[dict[str, Any]]:
    """One record per active judgment: prompt, both completions, which policy wrote each,
    choice, ratings, labeler (the comparisons.jsonl export with ``evaluation_id``)."""
    get_evaluation(db, evaluation_id)
    versions = dict(db.execute(select(Policy.id, Policy.version)).all())
    last = 0
    while True:
        rows = db.execute(
            select(
                ComparisonJudgment, CompareTask, Prompt, User.username, EvaluationComparison.gold_outcome,
                EvaluationComparison.sample_index,
            )
            .join(CompareTask, CompareTask.task_id == ComparisonJudgment.task_id)
            .join(Prompt, Prompt.id == ComparisonJudgment.prompt_id)
            .join(User, User.id == ComparisonJudgment.labeler_id)
            .join(EvaluationComparison, EvaluationComparison.id == ComparisonJudgment.comparison_id)
            .where(
                ComparisonJudgment.evaluation_id == evaluation_id,
                ComparisonJudgment.status == "active",
                ComparisonJudgment.id > last,
            )
            .order_by(ComparisonJudgment.id)
            .limit(batch)
        ).all()
        if not rows:
            return
        sample_ids = {ct.sample_a_id for _, ct, *_ in rows} | {ct.sample_b_id for _, ct, *_ in rows}
        texts = dict(db.execute(select(EvaluationSample.id, EvaluationSample.text).where(EvaluationSample.id.in_(sample_ids))).all())
        for j, ct, prompt, username, gold_outcome, sample_index in rows:
            last = j.id
            yield {
                "evaluation_id": evaluation_id,
                "judgment_id": j.id,
                "comparison_id": j.comparison_id,
                "sample_index": sample_index,
                "prompt_id": prompt.id,
                "prompt": prompt.display_text,
                "completion_a": texts.get(ct.sample_a_id, ""),
                "completion_b": texts.get(ct.sample_b_id, ""),
                "policy_a": versions.get(j.policy_a_id),
                "policy_b": versions.get(j.policy_b_id),
                "policy_a_id": j.policy_a_id,
                "policy_b_id": j.policy_b_id,
                "choice": j.choice,
                "ratings": j.ratings,
                "comment": j.comment,
                "labeler": username,
                "gold": gold_outcome is not None,
                "created_at": j.created_at.isoformat(),
            }


# --- the policies page: each version's human verdict beside its RM evaluation ------------


def policy_verdicts(db: Session, policies: Sequence[Policy]) -> dict[int, dict[str, Any]]:
    """Per policy with a parent: the human verdict on it against its parent, from the
    evaluation its own round opened (``evaluate_with_humans``, with that round's threshold)
    or else the newest evaluation that compares the two (threshold 0.5), beside the RM's
    reading from the round (``rm_win_rate``, ``rm_score_delta``). ``agreement`` is
    ``agree`` / ``disagree`` when the humans decided (better or worse) and the RM's win
    rate leans one way, else None."""
    evs = list_evaluations(db)  # newest first
    out: dict[int, dict[str, Any]] = {}
    for policy in policies:
        if policy.parent_id is None:
            continue
        pair = {policy.id, policy.parent_id}
        candidates = [ev for ev in evs if pair <= set(ev.policy_ids)]
        if not candidates:
            continue
        own = [ev for ev in candidates if policy.training_run_id and ev.training_run_id == policy.training_run_id]
        ev = (own or candidates)[0]
        threshold = 0.5
        if own:
            run = db.get(TrainingRun, policy.training_run_id)
            gate = (((run.metrics or {}) if run else {}).get("gates") or {}).get("human") or {}
            threshold = float(gate.get("threshold", 0.5))
        found = verdict(db, ev.id, policy.id, policy.parent_id, threshold=threshold)
        metrics = policy.metrics or {}
        rm_rate = metrics.get("win_rate")
        rm_rate = float(rm_rate) if isinstance(rm_rate, int | float) else None
        new, prev = metrics.get("mean_score_new"), metrics.get("mean_score_prev")
        delta = float(new) - float(prev) if isinstance(new, int | float) and isinstance(prev, int | float) else None
        agreement = None
        if rm_rate is not None and rm_rate != 0.5 and found["verdict"] in ("better", "worse"):
            agreement = "agree" if (found["verdict"] == "better") == (rm_rate > 0.5) else "disagree"
        out[policy.id] = {
            **found,
            "evaluation_name": ev.name,
            "evaluation_status": ev.status,
            "from_round": bool(own),
            "rm_win_rate": rm_rate,
            "rm_score_delta": delta,
            "agreement": agreement,
        }
    return out

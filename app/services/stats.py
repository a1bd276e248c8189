"""Progress and quality numbers for the dashboard and ``GET /api/v1/stats``.

Two jobs, a module each: labeling progress per set and split in
app/services/set_progress.py, per-labeler numbers and agreement in
app/services/labeler_stats.py; :func:`summary` puts them together. The ranking arithmetic
(pairs, agreement, Kendall tau, accuracy against gold) is in app/services/rankings.py; its
names are re-exported here for callers that found them here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.services.labeler_stats import LabelerStats, labeler_stats
from app.services.rankings import (
    PairCompare,
    compare_rankings,
    gold_agreement,
    ordered_pairs,
    pair_count,
    pairs_from_ranking,
    positions,
)
from app.services.set_progress import SetProgress, SplitProgress, progress

__all__ = [
    "LabelerStats",
    "PairCompare",
    "SetProgress",
    "SplitProgress",
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


def summary(db: Session, prompt_set_id: int | None = None) -> dict[str, Any]:
    """Everything ``GET /api/v1/stats`` answers: progress per set and split, labelers, agreement."""
    labelers, agreement = labeler_stats(db, prompt_set_id)
    return {
        "prompt_sets": [p.as_dict() for p in progress(db, prompt_set_id)],
        "labelers": [s.as_dict() for s in labelers],
        "agreement": agreement,
    }

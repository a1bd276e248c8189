"""The evaluation leaderboard: Bradley-Terry ratings with bootstrap intervals, and per pair
head-to-head counts and win rates with Wilson intervals (torch-free; numpy and scipy).

The model: P(i beats j) = sigmoid(theta_i - theta_j). Each judgment is one game between
the two policies it showed; "a"/"b" is a win for that side, "tie" and "both_bad" count
half a win for each (as Chatbot Arena counts ties, both-bad included). The strengths are
the maximum of the weighted log-likelihood with a tiny ridge term (it keeps the fit finite
when one policy won every game and pins the scale's zero at the mean), maximised with
scipy's L-BFGS-B on the exact gradient. ``rating`` is the same number on the Elo scale
Chatbot Arena reports: 1000 + 400 * theta / ln 10.

Intervals: percentile bootstrap over judgments (resampled with replacement, refitted
``rounds`` times with a fixed seed, so a page shows the same numbers on every reload).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.stats import norm

from app.models import FLAGS

ELO_SCALE = 400.0 / math.log(10.0)
ELO_BASE = 1000.0
RIDGE = 1e-4  # per game: negligible next to the data, enough to keep perfect records finite
Z95 = float(norm.ppf(0.975))


@dataclass(frozen=True)
class Game:
    """One judgment between two policies, as the leaderboard needs it."""

    policy_a: int
    policy_b: int
    choice: str  # a | b | tie | both_bad
    ratings: dict[str, Any] = field(default_factory=dict)  # "a"/"b" -> {"likert", "flags"}
    comparison_id: int | None = None
    labeler_id: int | None = None


def _score_a(choice: str) -> float:
    return {"a": 1.0, "b": 0.0}.get(choice, 0.5)


def fit_bradley_terry(
    index_a: np.ndarray,
    index_b: np.ndarray,
    score_a: np.ndarray,
    n_players: int,
    weights: np.ndarray | None = None,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """Strengths (natural log-odds scale, mean 0) maximising the Bradley-Terry likelihood.

    ``score_a`` is 1 for a win of a, 0 for a loss, 0.5 for a tie; ``weights`` count each
    game (bootstrap multiplicities); ``start`` is a warm start (bootstrap rounds start
    from the full fit, which saves most of the iterations).
    """
    w = np.ones(len(index_a)) if weights is None else weights.astype(float)
    total = max(float(w.sum()), 1.0)
    ridge = RIDGE * total

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        d = theta[index_a] - theta[index_b]
        p = 1.0 / (1.0 + np.exp(-d))
        # -[s log p + (1-s) log(1-p)], written stably with logaddexp
        nll = float(np.sum(w * (score_a * np.logaddexp(0.0, -d) + (1.0 - score_a) * np.logaddexp(0.0, d))))
        g_d = w * (p - score_a)
        grad = np.bincount(index_a, weights=g_d, minlength=n_players) - np.bincount(
            index_b, weights=g_d, minlength=n_players
        )
        return nll + ridge * float(theta @ theta), grad + 2.0 * ridge * theta

    x0 = np.zeros(n_players) if start is None else start
    result = minimize(objective, x0, jac=True, method="L-BFGS-B")
    theta = np.asarray(result.x, dtype=float)
    return theta - theta.mean()


def wilson(successes: float, n: float, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (``successes`` may be fractional: ties count half)."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _elo(theta: float) -> float:
    return ELO_BASE + ELO_SCALE * theta


def compute(
    games: Sequence[Game],
    policy_ids: Sequence[int],
    *,
    rounds: int = 200,
    seed: int = 0,
    labels: dict[int, str] | None = None,
) -> dict[str, Any]:
    """The whole leaderboard over ``games`` for ``policy_ids`` (the LeaderboardOut shape,
    less the evaluation's own fields)."""
    ids = list(dict.fromkeys(policy_ids))
    pos = {pid: i for i, pid in enumerate(ids)}
    games = [g for g in games if g.policy_a in pos and g.policy_b in pos and g.policy_a != g.policy_b]
    n = len(games)
    labels = labels or {}
    index_a = np.array([pos[g.policy_a] for g in games], dtype=int)
    index_b = np.array([pos[g.policy_b] for g in games], dtype=int)
    score_a = np.array([_score_a(g.choice) for g in games], dtype=float)

    # The likelihood depends on the games only through their counts per (a, b, score)
    # cell, so fits run on the cells, and resampling n games with replacement is one
    # multinomial draw over the cells (at most 3 P^2 of them, whatever n is).
    cells, counts = (
        np.unique(np.stack([index_a, index_b, score_a * 2]).T, axis=0, return_counts=True)
        if n
        else (np.zeros((0, 3)), np.zeros(0))
    )
    cell_a, cell_b, cell_s = cells[:, 0].astype(int), cells[:, 1].astype(int), cells[:, 2] / 2.0
    theta = fit_bradley_terry(cell_a, cell_b, cell_s, len(ids), counts) if n else np.zeros(len(ids))
    boots = np.zeros((0, len(ids)))
    if n and rounds > 0:
        rng = np.random.default_rng(seed)
        draws = rng.multinomial(n, counts / n, size=rounds)
        boots = np.stack([fit_bradley_terry(cell_a, cell_b, cell_s, len(ids), w, theta) for w in draws])

    per_policy = _per_policy(games, ids)
    rows = []
    for pid in ids:
        i = pos[pid]
        lo, hi = (np.percentile(boots[:, i], [2.5, 97.5]) if len(boots) else (None, None))
        stats = per_policy[pid]
        rows.append(
            {
                "policy_id": pid,
                "label": labels.get(pid, str(pid)),
                "strength": float(theta[i]),
                "strength_interval": None if lo is None else [float(lo), float(hi)],
                "rating": _elo(float(theta[i])),
                "rating_interval": None if lo is None else [_elo(float(lo)), _elo(float(hi))],
                **stats,
            }
        )
    rows.sort(key=lambda r: -r["strength"])
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return {
        "comparisons": n,
        "bootstrap_rounds": int(len(boots)),
        "policies": rows,
        "pairs": _pairs(games, ids, labels),
        "adjacent": _adjacent(rows, boots, theta, pos, n),
        "agreement": agreement(games),
    }


def _per_policy(games: Iterable[Game], ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Per policy: games, wins/losses/ties/both-bad, mean Likert and flag rates of its side."""
    acc: dict[int, dict[str, Any]] = {
        pid: {"games": 0, "wins": 0, "losses": 0, "ties": 0, "both_bad": 0, "likert": [], "flags": defaultdict(int)}
        for pid in ids
    }
    for g in games:
        for side, pid, other in (("a", g.policy_a, "b"), ("b", g.policy_b, "a")):
            a = acc[pid]
            a["games"] += 1
            if g.choice == side:
                a["wins"] += 1
            elif g.choice == other:
                a["losses"] += 1
            elif g.choice == "tie":
                a["ties"] += 1
            else:
                a["both_bad"] += 1
            rating = g.ratings.get(side) or {}
            if isinstance(rating.get("likert"), int):
                a["likert"].append(rating["likert"])
            for flag in rating.get("flags") or []:
                a["flags"][flag] += 1
    out: dict[int, dict[str, Any]] = {}
    for pid, a in acc.items():
        likert = a.pop("likert")
        flags = a.pop("flags")
        a["mean_likert"] = float(np.mean(likert)) if likert else None
        a["likert_count"] = len(likert)
        a["flag_rates"] = {f: (flags[f] / a["games"] if a["games"] else None) for f in FLAGS}
        out[pid] = a
    return out


def pair_counts(games: Iterable[Game], first: int, second: int) -> dict[str, Any]:
    """Head to head of ``first`` against ``second``: counts, win rate (ties and both-bad
    half) with its Wilson interval."""
    wins = losses = ties = both_bad = 0
    for g in games:
        if {g.policy_a, g.policy_b} != {first, second}:
            continue
        mine = "a" if g.policy_a == first else "b"
        if g.choice == mine:
            wins += 1
        elif g.choice in ("a", "b"):
            losses += 1
        elif g.choice == "tie":
            ties += 1
        else:
            both_bad += 1
    n = wins + losses + ties + both_bad
    score = wins + 0.5 * (ties + both_bad)
    interval = wilson(score, n)
    return {
        "policy_id": first,
        "opponent_id": second,
        "comparisons": n,
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "both_bad": both_bad,
        "win_rate": score / n if n else None,
        "win_rate_interval": list(interval) if interval else None,
    }


def _pairs(games: Sequence[Game], ids: Sequence[int], labels: dict[int, str]) -> list[dict[str, Any]]:
    out = []
    for i, first in enumerate(ids):
        for second in ids[i + 1 :]:
            row = pair_counts(games, first, second)
            row["label"] = f"{labels.get(first, first)} vs {labels.get(second, second)}"
            out.append(row)
    return out


def _adjacent(
    rows: list[dict[str, Any]], boots: np.ndarray, theta: np.ndarray, pos: dict[int, int], n: int
) -> list[dict[str, Any]]:
    """For each neighbour pair in the ranking: the strength gap, its bootstrap interval,
    whether it is separated (the interval excludes 0), and about how many more comparisons
    (over the whole evaluation, spread as so far) would make it so: the interval's width
    shrinks as 1/sqrt(N), so N' = N * (z * se / gap)^2. None when the gap is ~0."""
    out = []
    for upper, lower in zip(rows, rows[1:], strict=False):
        i, j = pos[upper["policy_id"]], pos[lower["policy_id"]]
        gap = float(theta[i] - theta[j])
        entry: dict[str, Any] = {
            "policy_id": upper["policy_id"],
            "below_id": lower["policy_id"],
            "gap": gap,
            "gap_interval": None,
            "separated": False,
            "more_comparisons_needed": None,
        }
        if len(boots) >= 2 and n:
            diffs = boots[:, i] - boots[:, j]
            lo, hi = np.percentile(diffs, [2.5, 97.5])
            entry["gap_interval"] = [float(lo), float(hi)]
            entry["separated"] = bool(lo > 0 or hi < 0)
            se = float(np.std(diffs, ddof=1))
            if entry["separated"]:
                entry["more_comparisons_needed"] = 0
            elif gap > 1e-6 and se > 0:
                needed = n * (Z95 * se / gap) ** 2
                entry["more_comparisons_needed"] = max(1, math.ceil(needed - n))
        out.append(entry)
    return out


def agreement(games: Sequence[Game]) -> dict[str, Any]:
    """Inter-labeler agreement: over comparisons judged by two or more labelers, the share
    of labeler pairs that gave the same outcome (sides mapped back to policies)."""
    by_comparison: dict[int, list[str]] = defaultdict(list)
    for g in games:
        if g.comparison_id is None:
            continue
        if g.choice in ("a", "b"):
            winner = g.policy_a if g.choice == "a" else g.policy_b
            by_comparison[g.comparison_id].append(f"p{winner}")
        else:
            by_comparison[g.comparison_id].append(g.choice)
    pairs = same = 0
    for outcomes in by_comparison.values():
        for i, first in enumerate(outcomes):
            for second in outcomes[i + 1 :]:
                pairs += 1
                same += first == second
    return {"labeler_pairs": pairs, "rate": same / pairs if pairs else None}

"""The leaderboard's statistics on synthetic judgments with known strengths (no database)."""

from __future__ import annotations

import math

import numpy as np

from app.services import leaderboard
from app.services.leaderboard import Game

TRUE = {1: 0.0, 2: 0.6, 3: 1.2, 4: -0.4}


def _games(rng: np.random.Generator, n: int, tie_rate: float = 0.0) -> list[Game]:
    ids = list(TRUE)
    out = []
    for _ in range(n):
        a, b = rng.choice(ids, size=2, replace=False)
        p = 1.0 / (1.0 + math.exp(-(TRUE[a] - TRUE[b])))
        if rng.random() < tie_rate:
            choice = "tie" if rng.random() < 0.5 else "both_bad"
        else:
            choice = "a" if rng.random() < p else "b"
        out.append(Game(int(a), int(b), choice))
    return out


def test_recovers_the_order_and_the_intervals_cover_the_truth() -> None:
    rng = np.random.default_rng(7)
    true = np.array(list(TRUE.values()))
    true = true - true.mean()  # strengths are reported with mean 0
    covered = total = 0
    for run in range(12):
        board = leaderboard.compute(_games(rng, 1500), list(TRUE), rounds=80, seed=run)
        order = [row["policy_id"] for row in board["policies"]]
        assert order == sorted(TRUE, key=lambda p: -TRUE[p]), (run, order)
        for row in board["policies"]:
            lo, hi = row["strength_interval"]
            covered += lo <= true[list(TRUE).index(row["policy_id"])] <= hi
            total += 1
            assert row["rating_interval"][0] <= row["rating"] <= row["rating_interval"][1] + 1e-9
    assert covered / total >= 0.85, f"95% intervals covered the truth in {covered}/{total}"


def test_ties_count_half_and_counts_add_up() -> None:
    games = [Game(1, 2, "a")] * 3 + [Game(2, 1, "tie")] * 2 + [Game(1, 2, "both_bad")] + [Game(2, 1, "a")]
    pair = leaderboard.pair_counts(games, 1, 2)
    assert (pair["wins"], pair["losses"], pair["ties"], pair["both_bad"]) == (3, 1, 2, 1)
    assert pair["win_rate"] == (3 + 0.5 * 3) / 7
    lo, hi = pair["win_rate_interval"]
    assert 0 <= lo < pair["win_rate"] < hi <= 1
    # equal records: equal strengths
    board = leaderboard.compute([Game(1, 2, "tie")] * 10, [1, 2], rounds=10)
    assert abs(board["policies"][0]["strength"]) < 1e-6


def test_perfect_record_stays_finite_and_adjacent_gaps() -> None:
    board = leaderboard.compute([Game(1, 2, "a")] * 30 + [Game(2, 3, "a"), Game(3, 2, "a")] * 2, [1, 2, 3], rounds=60)
    assert all(math.isfinite(r["strength"]) for r in board["policies"])
    first, second = board["adjacent"]
    assert first["policy_id"] == 1 and first["separated"] and first["more_comparisons_needed"] == 0
    assert not second["separated"]  # 2 and 3 split their games


def test_wilson_interval() -> None:
    lo, hi = leaderboard.wilson(50, 100)
    assert math.isclose(lo, 0.4038, abs_tol=1e-3) and math.isclose(hi, 0.5962, abs_tol=1e-3)
    assert leaderboard.wilson(0, 0) is None


def test_likert_and_flag_rates() -> None:
    games = [
        Game(1, 2, "a", {"a": {"likert": 6, "flags": []}, "b": {"likert": 2, "flags": ["made_up_facts"]}}),
        Game(2, 1, "b", {"a": {"likert": 4, "flags": ["made_up_facts"]}, "b": {"likert": 7, "flags": []}}),
    ]
    rows = {r["policy_id"]: r for r in leaderboard.compute(games, [1, 2], rounds=0)["policies"]}
    assert rows[1]["mean_likert"] == 6.5 and rows[2]["mean_likert"] == 3.0
    assert rows[2]["flag_rates"]["made_up_facts"] == 1.0 and rows[1]["flag_rates"]["made_up_facts"] == 0.0

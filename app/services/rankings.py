"""Ranking arithmetic, in plain Python (no torch, no database), for the app and the trainer.

* A ranking is best-first groups of ids; a group of more than one is a tie. It implies
  one ordered (chosen, rejected) pair for every two members of different groups: K
  choose 2 pairs less the tied ones (:func:`ordered_pairs`, :func:`pairs_from_ranking`,
  :func:`pair_count`).
* Pairwise agreement of two rankings of the same prompt: over the completions both
  ranked, the share of pairs that both order strictly on which they agree (a pair one
  of them ties is left out).
* Kendall tau (tau-b, which accounts for ties) of the two rankings over the common
  completions; undefined (None) when either ranks them all as one tie.
* Accuracy against gold: over the pairs the gold ranking orders strictly, the share the
  labeler orders the same way (a tie by the labeler counts as a miss).

The two comparisons walk the same thing, :func:`_pair_orders`: for each pair of ids both
rankings contain, how each one orders it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

RankingGroups = Sequence[Sequence[int]]


def positions(ranking: RankingGroups) -> dict[int, int]:
    """Id -> 0-based index of its group (equal for ties)."""
    return {cid: g for g, group in enumerate(ranking) for cid in group}


def ordered_pairs(ranking: RankingGroups) -> Iterator[tuple[int, int, int, int]]:
    """(chosen_id, rejected_id, chosen_rank, rejected_rank) for each pair across groups; ranks 1-based."""
    for i, better in enumerate(ranking):
        for j in range(i + 1, len(ranking)):
            for chosen in better:
                for rejected in ranking[j]:
                    yield chosen, rejected, i + 1, j + 1


def pairs_from_ranking(ranking: RankingGroups) -> list[tuple[int, int]]:
    """Ordered ``(winner, loser)`` pairs a ranking implies: every member of an earlier
    group beats every member of each later group; a tie forms no pair.
    ``[[0], [2, 1], [3]]`` gives ``(0,2), (0,1), (0,3), (2,3), (1,3)``."""
    return [(chosen, rejected) for chosen, rejected, _, _ in ordered_pairs(ranking)]


def pair_count(ranking: RankingGroups) -> int:
    """Number of ordered pairs a ranking implies: (n^2 - sum of squared group sizes) / 2."""
    n = sum(len(g) for g in ranking)
    return (n * n - sum(len(g) ** 2 for g in ranking)) // 2


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def _pair_orders(a: RankingGroups, b: RankingGroups) -> tuple[int, Iterator[tuple[int, int]]]:
    """The number of ids both rankings contain, and for each pair of them the order each
    ranking gives it (-1, 0 for a tie, +1)."""
    pa, pb = positions(a), positions(b)
    common = sorted(set(pa) & set(pb))

    def orders() -> Iterator[tuple[int, int]]:
        for i, x in enumerate(common):
            for y in common[i + 1 :]:
                yield _sign(pa[x] - pa[y]), _sign(pb[x] - pb[y])

    return len(common), orders()


@dataclass
class PairCompare:
    agree: int = 0  # pairs both order strictly, the same way
    comparable: int = 0  # pairs both order strictly
    tau: float | None = None  # Kendall tau-b over the common completions


def compare_rankings(a: RankingGroups, b: RankingGroups) -> PairCompare:
    """Pairwise agreement and Kendall tau-b of two rankings over the completions both contain."""
    n, orders = _pair_orders(a, b)
    out = PairCompare()
    ties_a = ties_b = discordant = 0
    for sa, sb in orders:
        ties_a += sa == 0
        ties_b += sb == 0
        if sa and sb:
            out.comparable += 1
            if sa == sb:
                out.agree += 1
            else:
                discordant += 1
    n0 = n * (n - 1) // 2
    denom = math.sqrt((n0 - ties_a) * (n0 - ties_b))
    if n >= 2 and denom > 0:
        out.tau = (out.agree - discordant) / denom
    return out


def gold_agreement(gold: RankingGroups, ranking: RankingGroups) -> tuple[int, int]:
    """(correct, total) over the pairs gold orders strictly among completions in both rankings."""
    correct = total = 0
    for sg, sr in _pair_orders(gold, ranking)[1]:
        if sg:
            total += 1
            correct += sr == sg
    return correct, total

"""The round's guards: the RM gate before PPO and the deploy gate before deployment.

Each gate is a :class:`Gate` with its figures (estimate and interval) and, when it fails,
a reason a person can act on. The figures go into the run's metrics (``gates``) so the
run page, ``GET /training/runs/{id}`` and ``rlhf train round --wait`` show them.

* **RM gate.** PPO optimises against the reward model, so an RM at chance turns PPO into a
  random walk away from the parent. PPO runs only when the held-out pairwise accuracy is
  above chance with confidence: the lower end of its Wilson interval over the held-out
  pairs above 0.5 (or a fixed threshold, ``rm_gate_min_accuracy``).
* **Deploy gate.** The new policy is deployed only when the evidence does not say it is
  worse than its parent: the interval of its mean RM-score difference reaches
  ``deploy_min_score_delta``, the interval of its win rate reaches ``deploy_min_win_rate``,
  and its KL from the parent is within ``deploy_max_kl``. Each check refuses on evidence
  of harm; none demands proof of improvement, so a small validation set does not block
  every round.

Plain Python (no torch): the app reads the same figures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

from trainer.config import GateConfig, RMConfig


def z_value(confidence: float) -> float:
    """Two-sided normal quantile for ``confidence`` (1.96 at 0.95)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion; ``(0, 1)`` when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    z = z_value(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean with a normal interval from its standard error."""
    n = len(values)
    if n == 0:
        return math.nan, -math.inf, math.inf
    mean = sum(values) / n
    if n == 1:
        return mean, -math.inf, math.inf
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = z_value(confidence) * math.sqrt(var / n)
    return mean, mean - half, mean + half


@dataclass
class Gate:
    """One check of a gate: its name, whether it passed, its figures and the reason."""

    name: str
    passed: bool
    value: float | None
    low: float | None = None
    high: float | None = None
    threshold: float | None = None
    n: int = 0
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        extra = out.pop("extra")
        return {k: _finite(v) for k, v in {**out, **extra}.items()}


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def pairs_needed(accuracy: float, confidence: float, cap: int = 1_000_000) -> int | None:
    """Held-out pairs at which ``accuracy`` would clear the Wilson gate (None if never)."""
    if accuracy <= 0.5:
        return None
    n = 1
    while n <= cap:
        if wilson_interval(accuracy * n, n, confidence)[0] > 0.5:
            return n
        n = max(n + 1, int(n * 1.1))
    return None


def rm_gate(
    accuracy: float | None,
    pairs: int,
    cfg: RMConfig,
    *,
    held_out_rankings: int,
    total_rankings: int,
) -> Gate:
    """Does the RM beat chance on held-out rankings? (see the module docstring)

    The reason of a failed gate estimates how many more rankings would be needed, from
    the held-out pairs per ranking and the share of rankings held out, assuming the
    accuracy stays as measured (or reaches 0.6 when it is at chance).
    """
    if accuracy is None or pairs <= 0:
        return Gate(
            "rm_accuracy", False, None, threshold=cfg.gate_min_accuracy, reason=(
                "no held-out rankings to test the reward model on (label some validation prompts, or "
                "give at least 5 rankings so some are held out)"
            ),
        )
    low, high = wilson_interval(accuracy * pairs, pairs, cfg.gate_confidence)
    if cfg.gate_min_accuracy is not None:
        passed = accuracy >= cfg.gate_min_accuracy
        threshold, rule = cfg.gate_min_accuracy, f"rm_gate_min_accuracy={cfg.gate_min_accuracy:g}"
        target = max(accuracy, 0.6)
    else:
        passed = low > 0.5
        threshold, rule = 0.5, f"the lower end of its {cfg.gate_confidence:.0%} interval must exceed 0.5"
        target = accuracy if accuracy > 0.55 else 0.6
    gate = Gate("rm_accuracy", passed, accuracy, low, high, threshold, pairs)
    if passed:
        return gate
    per_ranking = pairs / max(1, held_out_rankings)
    held_share = held_out_rankings / max(1, total_rankings)
    needed_pairs = pairs_needed(target, cfg.gate_confidence)
    more = ""
    if needed_pairs is not None and per_ranking > 0 and held_share > 0:
        extra = max(1, math.ceil(needed_pairs / per_ranking / held_share) - total_rankings)
        assumed = "" if target == accuracy else f" if the reward model reached {target:.2f}"
        more = f"; about {extra} more ranking(s) would be needed{assumed}"
        gate.extra["more_rankings_needed"] = extra
    chance = " (chance level)" if accuracy <= 0.55 else ""
    gate.reason = (
        f"reward model held-out accuracy {accuracy:.2f}{chance} on {pairs} pairs from {held_out_rankings} "
        f"ranking(s), {cfg.gate_confidence:.0%} interval {low:.2f}-{high:.2f}: not above chance ({rule}){more}"
    )
    return gate


def deploy_gates(evaluation: dict[str, Any], cfg: GateConfig) -> list[Gate]:
    """The three deploy checks over the round's evaluation against the parent.

    ``evaluation`` carries ``score_deltas`` (new - parent RM score per paired sample),
    ``wins`` (1, 0.5 or 0 per pair) and ``kls`` (per-sample KL estimates), or only
    ``kls`` when there is no usable reward model (the score checks then pass as "not
    measured": a reward model at chance cannot say a policy is worse).
    """
    gates: list[Gate] = []
    deltas = list(evaluation.get("score_deltas") or [])
    wins = list(evaluation.get("wins") or [])
    kls = list(evaluation.get("kls") or [])
    if deltas:
        mean, low, high = mean_interval(deltas, cfg.confidence)
        ok = high >= cfg.min_score_delta
        g = Gate("score_vs_parent", ok, mean, low, high, cfg.min_score_delta, len(deltas))
        if not ok:
            g.reason = (
                f"mean RM score {mean:+.3f} below the parent's ({cfg.confidence:.0%} interval {low:+.3f} to "
                f"{high:+.3f} over {len(deltas)} paired samples)"
            )
        gates.append(g)
    else:
        gates.append(Gate("score_vs_parent", True, None, reason="not measured: no reward model passed its gate"))
    if wins:
        rate = sum(wins) / len(wins)
        low, high = wilson_interval(sum(wins), len(wins), cfg.confidence)
        ok = high >= cfg.min_win_rate
        g = Gate("win_rate_vs_parent", ok, rate, low, high, cfg.min_win_rate, len(wins))
        if not ok:
            g.reason = (
                f"win rate against the parent {rate:.2f} ({cfg.confidence:.0%} interval {low:.2f}-{high:.2f} over "
                f"{len(wins)} pairs) below {cfg.min_win_rate:g}"
            )
        gates.append(g)
    else:
        gates.append(Gate("win_rate_vs_parent", True, None, reason="not measured: no reward model passed its gate"))
    if kls:
        mean, low, high = mean_interval(kls, cfg.confidence)
        ok = mean <= cfg.max_kl
        g = Gate("kl_from_parent", ok, mean, low, high, cfg.max_kl, len(kls))
        if not ok:
            g.reason = f"KL from the parent {mean:.2f} nats per response is over the budget deploy_max_kl={cfg.max_kl:g}"
        gates.append(g)
    else:
        gates.append(Gate("kl_from_parent", False, None, threshold=cfg.max_kl, reason="not measured: no evaluation samples"))
    return gates


def refusal(gates: list[Gate]) -> str:
    """One sentence from the failed gates ('' when all passed)."""
    return "; ".join(g.reason for g in gates if not g.passed)

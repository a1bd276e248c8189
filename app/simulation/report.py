"""The closed loop's results: one :class:`RoundRow` per round, as a CSV, a table and a plot
(app/simulation/loop.py measures them; ``rlhf simulate`` and bench/learning.py print them)."""

from __future__ import annotations

import csv
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class RoundRow:
    """One round of the closed loop: the policy labeled in it and how it measured."""

    round: int
    policy_version: int
    policy_id: int
    preference_score: float
    win_rate_vs_prev: float | None
    kl_from_v0: float | None
    rm_accuracy: float | None
    rankings: int
    demonstrations: int
    mean_words: float | None = None
    run_id: int | None = None
    note: str = ""



def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def format_row(row: RoundRow) -> str:
    """One round's row as a progress line."""
    return (
        f"round {row.round}: v{row.policy_version} score={_fmt(row.preference_score)} "
        f"win_vs_prev={_fmt(row.win_rate_vs_prev)} kl_v0={_fmt(row.kl_from_v0)} "
        f"rm_acc={_fmt(row.rm_accuracy)} words={_fmt(row.mean_words, '.1f')} "
        f"rankings={row.rankings} demos={row.demonstrations}"
    )


def write_csv(rows: list[RoundRow], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0]).keys()))
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    return path


def read_csv(path: Path) -> list[RoundRow]:
    """Rows back from :func:`write_csv` (e.g. to redraw the plot)."""

    def num(value: str, kind: type = float) -> Any:
        return None if value in ("", "None") else kind(float(value)) if kind is int else kind(value)

    with path.open(newline="") as f:
        return [
            RoundRow(
                round=int(r["round"]),
                policy_version=int(r["policy_version"]),
                policy_id=int(r["policy_id"]),
                preference_score=float(r["preference_score"]),
                win_rate_vs_prev=num(r["win_rate_vs_prev"]),
                kl_from_v0=num(r["kl_from_v0"]),
                rm_accuracy=num(r["rm_accuracy"]),
                rankings=int(r["rankings"]),
                demonstrations=int(r["demonstrations"]),
                mean_words=num(r.get("mean_words", "")),
                run_id=num(r["run_id"], int),
                note=r.get("note", ""),
            )
            for r in csv.DictReader(f)
        ]


def write_plot(rows: list[RoundRow], path: Path, preference: str) -> Path | None:
    """Two panels as a PNG (needs matplotlib): the preference score with KL from v0, and the
    win rate against the previous policy with the reward model's held-out accuracy."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed; no plot written")
        return None

    def series(values: list[float | None]) -> list[float]:
        return [float("nan") if v is None else v for v in values]

    rounds = [r.round for r in rows]
    ticks = [f"{r.round}\nv{r.policy_version}" for r in rows]
    fig, (ax1, ax3) = plt.subplots(1, 2, figsize=(10.0, 4.0), dpi=120)
    ax1.plot(rounds, [r.preference_score for r in rows], "o-", color="#3b5bdb", label=f"'{preference}' score")
    ax1.set_xlabel("round / policy labeled")
    ax1.set_ylabel(f"mean '{preference}' score (validation)", color="#3b5bdb")
    ax1.set_xticks(rounds, ticks)
    ax2 = ax1.twinx()
    ax2.plot(rounds, series([r.kl_from_v0 for r in rows]), "s--", color="#e67700", label="KL from v0")
    ax2.set_ylabel("KL from v0 (nats / response)", color="#e67700")
    lines = ax1.get_lines() + ax2.get_lines()
    ax1.legend(lines, [ln.get_label() for ln in lines], loc="upper left", fontsize=8)
    ax1.set_title("preference score and KL")
    ax3.axhline(0.5, color="#adb5bd", linewidth=1)
    ax3.plot(rounds, series([r.win_rate_vs_prev for r in rows]), "o-", color="#2b8a3e", label="win rate vs previous")
    ax3.plot(rounds, series([r.rm_accuracy for r in rows]), "^--", color="#862e9c", label="RM held-out accuracy")
    ax3.set_ylim(0.0, 1.0)
    ax3.set_xticks(rounds, ticks)
    ax3.set_xlabel("round / policy labeled")
    ax3.legend(loc="lower right", fontsize=8)
    ax3.set_title("win rate (under the preference) and RM accuracy")
    fig.suptitle("rlhf-studio closed loop with simulated labelers")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def table(rows: list[RoundRow]) -> list[list[str]]:
    header = ["round", "policy", "score", "win vs prev", "KL from v0", "RM acc", "words", "rankings", "demos", "note"]
    body = [
        [
            str(r.round),
            f"v{r.policy_version}",
            _fmt(r.preference_score),
            _fmt(r.win_rate_vs_prev),
            _fmt(r.kl_from_v0),
            _fmt(r.rm_accuracy),
            _fmt(r.mean_words, ".1f"),
            str(r.rankings),
            str(r.demonstrations),
            r.note,
        ]
        for r in rows
    ]
    return [header, *body]

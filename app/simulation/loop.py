"""The closed loop with simulated labelers: label -> train -> deploy -> label again.

Everything goes through the real HTTP API with bearer tokens. Each round:

1. fresh labeler accounts and tokens are created;
2. they claim rank tasks concurrently and rank the K completions by the preference
   (each adjacent pair flipped with probability ``flip_prob``), and write demonstrations
   (the best of the prompt's policy samples under the preference);
3. the validation completions of the serving policy are scored (the round's table row);
4. a training round is started with deploy on, and awaited;
5. the simulator waits until the sampler serves the new policy.

After the last round one more labeling pass produces the final policy's completions,
so every policy in the table is measured the same way.
"""

from __future__ import annotations

import csv
import itertools
import logging
import random
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.simulation.client import ApiError, StudioClient
from app.simulation.preferences import Preference, load_preference, rank_by_preference

log = logging.getLogger(__name__)


@dataclass
class SimulationConfig:
    url: str
    token: str
    prompt_set: str
    labelers: int = 4
    rounds: int = 2
    preference: str = "concise"
    demonstrations: int = 0
    flip_prob: float = 0.0
    seed: int = 0
    out_dir: Path = Path("data/simulation")
    train_config: dict[str, Any] = field(default_factory=dict)
    idle_timeout_s: float = 60.0
    round_timeout_s: float = 3600.0


@dataclass
class RoundRow:
    round: int
    policy_version: int
    policy_id: int
    preference_score: float
    win_rate_vs_prev: float | None
    kl_from_v0: float | None
    rm_accuracy: float | None
    rankings: int
    demonstrations: int
    run_id: int | None = None
    note: str = ""


Progress = Callable[[str], None]


def _noisy(ranking: list[list[int]], flip_prob: float, rng: random.Random) -> list[list[int]]:
    """Swap adjacent groups with probability flip_prob (simulated labeler noise)."""
    groups = [list(g) for g in ranking]
    for i in range(len(groups) - 1):
        if rng.random() < flip_prob:
            groups[i], groups[i + 1] = groups[i + 1], groups[i]
    return groups


class Simulation:
    def __init__(self, cfg: SimulationConfig, progress: Progress | None = None) -> None:
        self.cfg = cfg
        self.admin = StudioClient(cfg.url, cfg.token)
        self.preference: Preference = load_preference(cfg.preference)
        self.progress = progress or (lambda msg: log.info(msg))
        self.rng = random.Random(cfg.seed)
        sets = [s for s in self.admin.prompt_sets() if s["name"] == cfg.prompt_set]
        if not sets:
            raise ValueError(f"no prompt set named {cfg.prompt_set!r}")
        self.prompt_set = sets[0]

    # --- labeling ----------------------------------------------------------------------
    def _labelers(self, round_no: int) -> list[StudioClient]:
        clients = []
        tag = secrets.token_hex(3)
        for i in range(self.cfg.labelers):
            user = self.admin.create_user(f"sim-r{round_no}-{tag}-{i}", secrets.token_urlsafe(12))
            clients.append(StudioClient(self.cfg.url, self.admin.create_token(user["id"])))
        return clients

    def _rank_loop(self, client: StudioClient, seed: int) -> int:
        rng = random.Random(seed)
        done = 0
        idle_since: float | None = None
        while True:
            task = client.next_task(self.prompt_set["id"], "rank")
            if task is None:
                # The sampler may still be filling the buffer; wait a while before giving up.
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > self.cfg.idle_timeout_s or self._all_ranked():
                    return done
                time.sleep(1.0)
                continue
            idle_since = None
            completions = [(c["id"], c["text"]) for c in task["completions"]]
            ranking = _noisy(rank_by_preference(self.preference, task["prompt"], completions), self.cfg.flip_prob, rng)
            client.submit_ranking(task["id"], ranking, time_spent_s=0.0)
            done += 1

    def _all_ranked(self) -> bool:
        try:
            stats = self.admin.get("/stats", prompt_set_id=self.prompt_set["id"])
        except ApiError:
            return False
        progress = stats.get("progress") or stats.get("sets") or []
        for entry in progress if isinstance(progress, list) else [progress]:
            if entry.get("prompt_set_id", self.prompt_set["id"]) == self.prompt_set["id"]:
                remaining = entry.get("remaining_rank_slots")
                if remaining is not None:
                    return remaining == 0
        return False

    def _demonstrate(self, clients: list[StudioClient], policy_id: int) -> int:
        written = 0
        for client in itertools.islice(itertools.cycle(clients), self.cfg.demonstrations * 2):
            if written >= self.cfg.demonstrations:
                break
            task = client.next_task(self.prompt_set["id"], "demonstrate")
            if task is None:
                break
            samples = self.admin.completions(prompt_id=task.get("prompt_id"), policy_id=policy_id)
            if not samples:
                client.skip(task["id"], "no policy samples to choose from")
                continue
            best = max(samples, key=lambda c: self.preference(task["prompt"], c["text"]))
            client.submit_demonstration(task["id"], best["text"])
            written += 1
        return written

    def label_pass(self, round_no: int, policy_id: int) -> tuple[int, int]:
        clients = self._labelers(round_no)
        try:
            with ThreadPoolExecutor(len(clients)) as pool:
                seeds = [self.rng.randrange(1 << 30) for _ in clients]
                rankings = sum(pool.map(self._rank_loop, clients, seeds))
            demos = self._demonstrate(clients, policy_id) if self.cfg.demonstrations else 0
        finally:
            for c in clients:
                c.close()
        return rankings, demos

    # --- measuring ---------------------------------------------------------------------
    def _validation(self, policy_id: int) -> dict[int, list[dict[str, Any]]]:
        rows = self.admin.completions(prompt_set_id=self.prompt_set["id"], policy_id=policy_id, split="validation")
        by_prompt: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            by_prompt.setdefault(row["prompt_id"], []).append(row)
        return by_prompt

    def score(self, policy_id: int) -> float:
        scores = [self.preference(c["prompt"], c["text"]) for rows in self._validation(policy_id).values() for c in rows]
        return sum(scores) / len(scores) if scores else float("nan")

    def win_rate(self, new_id: int, old_id: int) -> float | None:
        new, old = self._validation(new_id), self._validation(old_id)
        wins = total = 0.0
        for prompt_id in new.keys() & old.keys():
            for a in new[prompt_id]:
                for b in old[prompt_id]:
                    sa, sb = self.preference(a["prompt"], a["text"]), self.preference(b["prompt"], b["text"])
                    wins += 1.0 if sa > sb else 0.5 if sa == sb else 0.0
                    total += 1
        return wins / total if total else None

    # --- training ----------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        run_id = self.admin.start_round([self.prompt_set["id"]], deploy=True, config=self.cfg.train_config)
        self.progress(f"training run {run_id} started")
        deadline = time.monotonic() + self.cfg.round_timeout_s
        last = ""
        while time.monotonic() < deadline:
            run = self.admin.run(run_id)
            line = f"run {run_id}: {run['status']} {run.get('stage') or ''} {100 * (run.get('progress') or 0):.0f}%"
            if line != last:
                self.progress(line)
                last = line
            if run["status"] in ("succeeded", "failed", "cancelled"):
                return run
            time.sleep(2.0)
        raise TimeoutError(f"training run {run_id} did not finish in {self.cfg.round_timeout_s:.0f} s")

    def deployed(self) -> dict[str, Any]:
        for p in self.admin.policies():
            if p["deployed"]:
                return p
        raise RuntimeError("no policy is deployed")

    # --- the loop ----------------------------------------------------------------------
    def run(self) -> list[RoundRow]:
        rows: list[RoundRow] = []
        policy = self.deployed()
        prev_id: int | None = None
        run: dict[str, Any] | None = None
        for round_no in range(self.cfg.rounds + 1):
            self.progress(f"round {round_no}: labeling completions of policy v{policy['version']}")
            rankings, demos = self.label_pass(round_no, policy["id"])
            rm_acc = _rm_accuracy(run) if run else None
            rows.append(
                RoundRow(
                    round=round_no,
                    policy_version=policy["version"],
                    policy_id=policy["id"],
                    preference_score=self.score(policy["id"]),
                    win_rate_vs_prev=self.win_rate(policy["id"], prev_id) if prev_id else None,
                    kl_from_v0=(policy.get("metrics") or {}).get("kl_from_v0", 0.0 if round_no == 0 else None),
                    rm_accuracy=rm_acc,
                    rankings=rankings,
                    demonstrations=demos,
                    run_id=run["id"] if run else None,
                )
            )
            self.progress(_format_row(rows[-1]))
            if round_no == self.cfg.rounds:
                break
            run = self.train()
            if run["status"] != "succeeded" or not run.get("policy_id"):
                rows[-1].note = f"round {round_no + 1} training {run['status']}: {run.get('error') or 'no new policy'}"
                self.progress(rows[-1].note)
                break
            prev_id = policy["id"]
            policy = self._wait_deployed(run["policy_id"])
        return rows

    def _wait_deployed(self, policy_id: int, timeout_s: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            policy = self.deployed()
            if policy["id"] == policy_id:
                return policy
            time.sleep(1.0)
        raise TimeoutError(f"policy {policy_id} was not deployed within {timeout_s:.0f} s")


def _rm_accuracy(run: dict[str, Any]) -> float | None:
    metrics = run.get("metrics") or {}
    rm = metrics.get("rm") if isinstance(metrics.get("rm"), dict) else metrics
    for key in ("val_accuracy", "held_out_accuracy", "accuracy", "rm/val_accuracy"):
        if isinstance(rm, dict) and isinstance(rm.get(key), (int, float)):
            return float(rm[key])
    return None


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _format_row(row: RoundRow) -> str:
    return (
        f"round {row.round}: v{row.policy_version} score={_fmt(row.preference_score)} "
        f"win_vs_prev={_fmt(row.win_rate_vs_prev)} kl_v0={_fmt(row.kl_from_v0)} "
        f"rm_acc={_fmt(row.rm_accuracy)} rankings={row.rankings} demos={row.demonstrations}"
    )


def write_csv(rows: list[RoundRow], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0]).keys()))
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    return path


def write_plot(rows: list[RoundRow], path: Path, preference: str) -> Path | None:
    """Preference score and KL from v0 per round, as a PNG (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed; no plot written")
        return None
    rounds = [r.round for r in rows]
    fig, ax1 = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax1.plot(rounds, [r.preference_score for r in rows], "o-", color="#3b5bdb", label=f"{preference} score")
    ax1.set_xlabel("round (policy version after training)")
    ax1.set_ylabel(f"mean '{preference}' score (validation)", color="#3b5bdb")
    ax1.set_xticks(rounds, [f"{r.round}\nv{r.policy_version}" for r in rows])
    ax2 = ax1.twinx()
    ax2.plot(rounds, [r.kl_from_v0 if r.kl_from_v0 is not None else float("nan") for r in rows], "s--", color="#e67700")
    ax2.set_ylabel("KL from v0 (nats / response)", color="#e67700")
    ax1.set_title("rlhf-studio closed loop with simulated labelers")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def table(rows: list[RoundRow]) -> list[list[str]]:
    header = ["round", "policy", "score", "win vs prev", "KL from v0", "RM acc", "rankings", "demos", "note"]
    body = [
        [
            str(r.round),
            f"v{r.policy_version}",
            _fmt(r.preference_score),
            _fmt(r.win_rate_vs_prev),
            _fmt(r.kl_from_v0),
            _fmt(r.rm_accuracy),
            str(r.rankings),
            str(r.demonstrations),
            r.note,
        ]
        for r in rows
    ]
    return [header, *body]

"""The closed loop with simulated labelers: label -> train -> deploy -> label again.

Everything goes through the real HTTP API with bearer tokens. Each round:

1. fresh labeler accounts and tokens are created;
2. they claim rank tasks concurrently and rank the K completions by the preference
   (each adjacent pair flipped with probability ``flip_prob``), and write demonstrations
   (the best of the prompt's policy samples under the preference);
3. the validation completions of the serving policy are scored (the round's table row):
   the preference's mean score, the win rate against the previous policy's completions
   under the preference, KL from v0 (the trainer's evaluation) and the held-out accuracy
   of the reward model that the round trained;
4. a training round is started with deploy on (``POST /training/rounds``), and awaited;
5. the simulator waits until a live worker's sampler has loaded the new policy.

Labelers stop when their ``/tasks/progress`` shows nothing left to rank and nothing
waiting for the sampler, so the pass covers every prompt of the set once per policy
(rank slots are per prompt and policy).

After the last round one more labeling pass produces the final policy's completions,
so every policy in the table is measured the same way. The table's rows, their CSV and the
plot are app/simulation/report.py.
"""

from __future__ import annotations

import itertools
import logging
import random
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.simulation.client import StudioClient
from app.simulation.preferences import Preference, load_preference, rank_by_preference
from app.simulation.report import RoundRow, format_row, read_csv, table, write_csv, write_plot

__all__ = [
    "RoundRow", "Simulation", "SimulationConfig", "noisy", "read_csv", "table", "win_rate", "write_csv", "write_plot",
]

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
    idle_timeout_s: float = 900.0
    round_timeout_s: float = 3600.0
    poll_s: float = 1.0


Progress = Callable[[str], None]


class Simulation:
    def __init__(self, cfg: SimulationConfig, progress: Progress | None = None) -> None:
        self.cfg = cfg
        self.admin = StudioClient(cfg.url, cfg.token)
        self.preference: Preference = load_preference(cfg.preference)
        self.progress = progress or (lambda msg: log.info(msg))
        self.rng = random.Random(cfg.seed)
        self.rows: list[RoundRow] = []
        self.runs: list[dict[str, Any]] = []  # every training run's final state, in order
        sets = [s for s in self.admin.prompt_sets() if s["name"] == cfg.prompt_set]
        if not sets:
            raise ValueError(f"no prompt set named {cfg.prompt_set!r}")
        self.prompt_set = sets[0]
        # conversation sets (app/simulation/conversations.py): the contexts rank tasks showed
        self.contexts: dict[int, Any] = {}
        self.last_pass: dict[str, int] = {}

    def close(self) -> None:
        self.admin.close()

    def evaluate(self, policy_ids: list[int], name: str | None = None, overlap: int = 1) -> dict[str, Any]:
        """A blind human-style evaluation of ``policy_ids`` on the set's validation split by
        fresh simulated labelers (their preference, with ``flip_prob`` noise): the result of
        :func:`app.simulation.compare.simulate_evaluation` (leaderboard, the preference's mean
        score of each policy's compared samples, and whether the two orders agree)."""
        from app.simulation.compare import simulate_evaluation

        return simulate_evaluation(
            self.cfg.url, self.cfg.token, policy_ids, self.prompt_set["id"], labelers=self.cfg.labelers,
            preference=self.preference, flip_prob=self.cfg.flip_prob, overlap=overlap, name=name,
            seed=self.cfg.seed, timeout_s=self.cfg.idle_timeout_s, poll_s=self.cfg.poll_s,
        )

    # --- labeling ----------------------------------------------------------------------
    def _labelers(self, round_no: int) -> list[StudioClient]:
        clients = []
        tag = secrets.token_hex(3)
        for i in range(self.cfg.labelers):
            user = self.admin.create_user(f"sim-r{round_no}-{tag}-{i}", secrets.token_urlsafe(12))
            clients.append(StudioClient(self.cfg.url, self.admin.create_token(user["id"])))
        return clients

    def _rank_loop(self, client: StudioClient, seed: int) -> int:
        """Claim and rank until nothing is left for this labeler; returns the rankings written.

        A 204 from ``/tasks/next`` while the sampler is still producing completions is not
        the end: the labeler's ``/tasks/progress`` says how many prompts wait for completions.
        It stops when none is left to rank or to wait for, or after ``idle_timeout_s``
        without a task.
        """
        rng = random.Random(seed)
        done = 0
        idle_since: float | None = None
        set_id = self.prompt_set["id"]
        while True:
            task = client.next_task(set_id, "rank")
            if task is None:
                progress = client.get("/tasks/progress", prompt_set_id=set_id)
                if progress["rank_left"] == 0 and progress["waiting_for_completions"] == 0:
                    return done
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > self.cfg.idle_timeout_s:
                    log.warning("labeler gave up after %.0f s without a task: %s", self.cfg.idle_timeout_s, progress)
                    return done
                time.sleep(self.cfg.poll_s)
                continue
            idle_since = None
            completions = [(c["id"], c["text"]) for c in task["completions"]]
            ranking = noisy(rank_by_preference(self.preference, task["prompt"], completions), self.cfg.flip_prob, rng)
            client.submit_ranking(task["id"], ranking, time_spent_s=0.0)
            done += 1

    def _demonstrate(self, clients: list[StudioClient], policy_id: int) -> int:
        """Up to ``demonstrations`` demonstrations: the best of the prompt's samples under the preference."""
        written = 0
        for client in itertools.islice(itertools.cycle(clients), self.cfg.demonstrations * 2):
            if written >= self.cfg.demonstrations:
                break
            task = client.next_task(self.prompt_set["id"], "demonstrate")
            if task is None:
                break
            best = self.best_sample(task["prompt_id"], policy_id, task["prompt"])
            if best is None:
                client.skip(task["id"], "no policy samples to choose from")
                continue
            client.submit_demonstration(task["id"], best)
            written += 1
        return written

    def best_sample(self, prompt_id: int, policy_id: int, prompt: str) -> str | None:
        """The best of the policy's samples of a prompt under the preference (None without any)."""
        samples = self.admin.completions(prompt_id=prompt_id, policy_id=policy_id)
        if not samples:
            return None
        return max(samples, key=lambda c: self.preference(prompt, c["text"]))["text"]

    def label_pass(self, round_no: int, policy_id: int) -> tuple[int, int]:
        """Fresh labelers rank everything open (concurrently), then write demonstrations.

        On a conversation set they also continue conversations (app/simulation/conversations.py)."""
        clients = self._labelers(round_no)
        try:
            if self.prompt_set.get("kind") == "conversation":
                from app.simulation.conversations import label_pass

                return label_pass(self, clients, policy_id)
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
        """The policy's sampled completions of the set's validation prompts, by prompt."""
        rows = self.admin.completions(
            prompt_set_id=self.prompt_set["id"], policy_id=policy_id, split="validation", limit=10_000
        )
        by_prompt: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            if row["prompt_id"] in self.contexts:  # a conversation's context, as its rankings saw it
                row["prompt"] = self.contexts[row["prompt_id"]].prompt
            by_prompt.setdefault(row["prompt_id"], []).append(row)
        return by_prompt

    def measure(self, policy_id: int) -> dict[str, float]:
        """Mean preference score, mean words and share of completions that end a sentence."""
        rows = [c for cs in self._validation(policy_id).values() for c in cs]
        if not rows:
            return {"score": float("nan"), "words": float("nan"), "completions": 0}
        scores = [self.preference(c["prompt"], c["text"]) for c in rows]
        words = [len(c["text"].split()) for c in rows]
        return {"score": sum(scores) / len(rows), "words": sum(words) / len(rows), "completions": len(rows)}

    def score(self, policy_id: int) -> float:
        return self.measure(policy_id)["score"]

    def win_rate(self, new_id: int, old_id: int) -> float | None:
        """Share of (new, old) completion pairs of the same validation prompt that the new one wins (ties 1/2)."""
        return win_rate(self.preference, self._validation(new_id), self._validation(old_id))

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
            time.sleep(self.cfg.poll_s * 2)
        raise TimeoutError(f"training run {run_id} did not finish in {self.cfg.round_timeout_s:.0f} s")

    def deployed(self) -> dict[str, Any]:
        for p in self.admin.policies():
            if p["deployed"]:
                return p
        raise RuntimeError("no policy is deployed")

    def wait_serving(self, policy_id: int, timeout_s: float = 600.0) -> dict[str, Any]:
        """Wait until ``policy_id`` is deployed and a live worker's sampler has loaded it."""
        deadline = time.monotonic() + timeout_s
        policy = self.deployed()
        while time.monotonic() < deadline:
            policy = self.deployed()
            if policy["id"] == policy_id:
                live = [w for w in self.admin.get("/workers") if w["alive"]]
                if any(w.get("policy_id") == policy_id for w in live):
                    return policy
            time.sleep(self.cfg.poll_s)
        if policy["id"] != policy_id:
            raise TimeoutError(f"policy {policy_id} was not deployed within {timeout_s:.0f} s")
        self.progress(f"no live sampler reported policy {policy_id} within {timeout_s:.0f} s; labeling anyway")
        return policy

    # --- the loop ----------------------------------------------------------------------
    def run(self) -> list[RoundRow]:
        """All rounds; ``self.rows`` holds the finished ones if it stops with an error."""
        rows = self.rows = []
        policy = self.deployed()
        prev_id: int | None = None
        run: dict[str, Any] | None = None
        for round_no in range(self.cfg.rounds + 1):
            self.progress(f"round {round_no}: labeling completions of policy v{policy['version']}")
            rankings, demos = self.label_pass(round_no, policy["id"])
            measured = self.measure(policy["id"])
            rows.append(
                RoundRow(
                    round=round_no,
                    policy_version=policy["version"],
                    policy_id=policy["id"],
                    preference_score=measured["score"],
                    win_rate_vs_prev=self.win_rate(policy["id"], prev_id) if prev_id else None,
                    kl_from_v0=_kl_from_v0(policy),
                    rm_accuracy=_rm_accuracy(run) if run else None,
                    rankings=rankings,
                    demonstrations=demos,
                    mean_words=measured["words"],
                    run_id=run["id"] if run else None,
                )
            )
            self.progress(format_row(rows[-1]))
            if round_no == self.cfg.rounds:
                break
            run = self.train()
            self.runs.append(run)
            summary = run.get("error") or (run.get("metrics") or {}).get("summary") or "no new policy"
            if run["status"] != "succeeded" or not run.get("policy_id"):
                rows[-1].note = f"training run {run['id']} {run['status']}: {summary}"
                self.progress(rows[-1].note)
                break
            if not (run.get("metrics") or {}).get("deployed"):
                # The deploy gate kept the parent: its completions are ranked already, so
                # another pass would add no data. The loop ends here and says why.
                rows[-1].note = f"training run {run['id']}: {summary}"
                self.progress(rows[-1].note)
                break
            prev_id = policy["id"]
            policy = self.wait_serving(run["policy_id"])
        return rows


def noisy(ranking: list[list[int]], flip_prob: float, rng: random.Random) -> list[list[int]]:
    """Simulated labeler noise: each adjacent pair of groups is swapped with probability ``flip_prob``.

    The groups are walked best to worst; a swapped group can move down again at the next step.
    """
    groups = [list(g) for g in ranking]
    for i in range(len(groups) - 1):
        if rng.random() < flip_prob:
            groups[i], groups[i + 1] = groups[i + 1], groups[i]
    return groups


def win_rate(
    preference: Preference,
    new: dict[int, list[dict[str, Any]]],
    old: dict[int, list[dict[str, Any]]],
) -> float | None:
    """Over prompts both have: share of (new, old) pairs the new completion wins, ties counting 1/2."""
    wins = total = 0.0
    for prompt_id in new.keys() & old.keys():
        for a in new[prompt_id]:
            sa = preference(a["prompt"], a["text"])
            for b in old[prompt_id]:
                sb = preference(b["prompt"], b["text"])
                wins += 1.0 if sa > sb else 0.5 if sa == sb else 0.0
                total += 1
    return wins / total if total else None


def _kl_from_v0(policy: dict[str, Any]) -> float | None:
    if policy["version"] == 0:
        return 0.0
    value = (policy.get("metrics") or {}).get("kl_from_v0")
    return float(value) if isinstance(value, (int, float)) else None


def _rm_accuracy(run: dict[str, Any]) -> float | None:
    """The held-out pairwise accuracy of the reward model the run trained (None when it trained none)."""
    rm = (run.get("metrics") or {}).get("rm")
    value = rm.get("val_accuracy") if isinstance(rm, dict) else None
    return float(value) if isinstance(value, (int, float)) else None

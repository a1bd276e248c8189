"""Simulated labelers for human evaluations: they answer compare tasks through the HTTP API
with the scripted preference, with flip noise, as :mod:`app.simulation.loop` ranks.

A simulated judgment scores both sides with the preference: the higher one wins; a gap
below ``tie_margin`` is a tie ("both_bad" when both score below ``bad_below``); then, with
probability ``flip_prob``, a decided answer is flipped (a labeler's mistake).
"""

from __future__ import annotations

import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.simulation.client import StudioClient
from app.simulation.preferences import Preference

log = logging.getLogger(__name__)


def compare_choice(
    preference: Preference,
    prompt: str,
    text_a: str,
    text_b: str,
    *,
    flip_prob: float = 0.0,
    rng: random.Random | None = None,
    tie_margin: float = 1e-9,
    bad_below: float | None = None,
) -> str:
    """The simulated labeler's choice: ``a``, ``b``, ``tie`` or ``both_bad``."""
    rng = rng or random.Random()
    score_a, score_b = preference(prompt, text_a), preference(prompt, text_b)
    if abs(score_a - score_b) < tie_margin:
        if bad_below is not None and max(score_a, score_b) < bad_below:
            return "both_bad"
        return "tie"
    choice = "a" if score_a > score_b else "b"
    if rng.random() < flip_prob:
        choice = "b" if choice == "a" else "a"
    return choice


def compare_loop(
    client: StudioClient,
    evaluation_id: int,
    preference: Preference,
    *,
    flip_prob: float = 0.0,
    seed: int = 0,
    max_tasks: int | None = None,
) -> int:
    """Claim and judge compare tasks until nothing is left for this labeler; returns how many."""
    rng = random.Random(seed)
    done = 0
    while max_tasks is None or done < max_tasks:
        r = client.post("/tasks/next", {"evaluation_id": evaluation_id, "kind": "compare"})
        if r.status_code == 204:
            return done
        task = r.json()
        sides = {s["side"]: s["text"] for s in task["sides"]}
        choice = compare_choice(preference, task["prompt"], sides["a"], sides["b"], flip_prob=flip_prob, rng=rng)
        client.post(f"/tasks/{task['id']}/comparison", {"choice": choice, "time_spent_s": 0.0})
        done += 1
    return done


def wait_active(admin: StudioClient, evaluation_id: int, timeout_s: float = 900.0, poll_s: float = 1.0) -> dict[str, Any]:
    """Wait until the sampler has written the evaluation's samples (status ``active``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ev = admin.get(f"/evaluations/{evaluation_id}")
        if ev["status"] != "sampling":
            return ev
        if time.monotonic() > deadline:
            raise TimeoutError(f"evaluation {evaluation_id} still waits for {ev['missing_samples']} samples")
        time.sleep(poll_s)


def run_evaluation(
    admin: StudioClient,
    labelers: list[StudioClient],
    preference: Preference,
    *,
    name: str,
    policy_ids: list[int],
    prompt_set_ids: list[int],
    split: str = "validation",
    overlap: int = 1,
    per_pair: int = 1,
    flip_prob: float = 0.0,
    seed: int = 0,
    timeout_s: float = 900.0,
) -> dict[str, Any]:
    """Create an evaluation, wait for its samples, let the labelers judge every comparison
    concurrently, and return the leaderboard (``GET /evaluations/{id}/leaderboard``)."""
    body = {
        "name": name, "policy_ids": policy_ids, "prompt_set_ids": prompt_set_ids, "split": split,
        "overlap": overlap, "per_pair": per_pair, "seed": seed,
    }
    ev = admin.post("/evaluations", body).json()
    wait_active(admin, ev["id"], timeout_s)
    with ThreadPoolExecutor(max_workers=max(1, len(labelers))) as pool:
        counts = list(
            pool.map(
                lambda ic: compare_loop(ic[1], ev["id"], preference, flip_prob=flip_prob, seed=seed * 1000 + ic[0]),
                enumerate(labelers),
            )
        )
    log.info("evaluation %r: %d judgments by %d simulated labelers", name, sum(counts), len(labelers))
    return admin.get(f"/evaluations/{ev['id']}/leaderboard")

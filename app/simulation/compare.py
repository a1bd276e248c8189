"""Simulated labelers for human evaluations: they answer compare tasks through the HTTP API
with the scripted preference, with flip noise, as :mod:`app.simulation.loop` ranks.

A simulated judgment scores both sides with the preference: the higher one wins; a gap
below ``tie_margin`` is a tie ("both_bad" when both score below ``bad_below``); then, with
probability ``flip_prob``, a decided answer is flipped (a labeler's mistake).

:func:`simulate_evaluation` is the whole exercise against a running service (base URL and
an admin token): evaluation, samples, judgments, leaderboard, and the preference's own mean
score of each policy's compared samples, so a benchmark can show whether the blind verdict
agrees with the scores.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.simulation.client import StudioClient
from app.simulation.preferences import Preference, load_preference

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
    ev_id = _evaluate(
        admin, labelers, preference, name=name, policy_ids=policy_ids, prompt_set_ids=prompt_set_ids, split=split,
        overlap=overlap, per_pair=per_pair, flip_prob=flip_prob, seed=seed, timeout_s=timeout_s,
    )
    return admin.get(f"/evaluations/{ev_id}/leaderboard")


def _evaluate(
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
    max_prompts: int | None = None,
    flip_prob: float = 0.0,
    seed: int = 0,
    timeout_s: float = 900.0,
    poll_s: float = 1.0,
) -> int:
    """Create the evaluation, wait for its samples, judge it all; returns its id."""
    body: dict[str, Any] = {
        "name": name, "policy_ids": policy_ids, "prompt_set_ids": prompt_set_ids, "split": split,
        "overlap": overlap, "per_pair": per_pair, "seed": seed,
    }
    if max_prompts is not None:
        body["max_prompts"] = max_prompts
    ev = admin.post("/evaluations", body).json()
    wait_active(admin, ev["id"], timeout_s, poll_s)
    with ThreadPoolExecutor(max_workers=max(1, len(labelers))) as pool:
        counts = list(
            pool.map(
                lambda ic: compare_loop(ic[1], ev["id"], preference, flip_prob=flip_prob, seed=seed * 1000 + ic[0]),
                enumerate(labelers),
            )
        )
    log.info("evaluation %r: %d judgments by %d simulated labelers", name, sum(counts), len(labelers))
    return int(ev["id"])


def judgments(admin: StudioClient, evaluation_id: int) -> list[dict[str, Any]]:
    """Every judgment of an evaluation (``GET /exports/comparisons.jsonl?evaluation_id=``)."""
    r = admin.request("GET", "/exports/comparisons.jsonl", params={"evaluation_id": evaluation_id})
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def preference_scores(preference: Preference, rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per policy: the preference's mean score over its compared samples (each (prompt,
    policy, sample index) once, however many comparisons and labelers showed it)."""
    seen: dict[tuple[int, int, int], tuple[int | None, float]] = {}
    for row in rows:
        for side in ("a", "b"):
            key = (int(row["prompt_id"]), int(row[f"policy_{side}_id"]), int(row.get("sample_index") or 0))
            if key not in seen:
                seen[key] = (row.get(f"policy_{side}"), float(preference(row["prompt"], row[f"completion_{side}"])))
    out: dict[int, dict[str, Any]] = {}
    for (_, policy_id, _), (version, score) in seen.items():
        entry = out.setdefault(policy_id, {"version": version, "total": 0.0, "samples": 0})
        entry["total"] += score
        entry["samples"] += 1
    return {
        pid: {"version": e["version"], "mean_score": e["total"] / e["samples"], "samples": e["samples"]}
        for pid, e in sorted(out.items())
    }


def simulate_evaluation(
    base_url: str,
    token: str,
    policy_ids: list[int],
    prompt_set: int | str,
    *,
    labelers: int = 4,
    preference: str | Preference = "concise",
    flip_prob: float = 0.0,
    overlap: int = 1,
    per_pair: int = 1,
    max_prompts: int | None = None,
    name: str | None = None,
    seed: int = 0,
    timeout_s: float = 900.0,
    poll_s: float = 1.0,
) -> dict[str, Any]:
    """A blind human-style evaluation of ``policy_ids`` on the validation split of
    ``prompt_set`` (its id or name) by ``labelers`` fresh simulated labeler accounts, through
    the running service at ``base_url`` with an admin API ``token``.

    Creates the evaluation, waits (up to ``timeout_s``) for the worker's evaluation sampler
    to write every policy's samples, lets the labelers answer every compare task
    concurrently with ``preference`` (a built-in name, ``module:function``, or a callable)
    and ``flip_prob`` noise, and returns::

        {"evaluation_id", "evaluation": GET /evaluations/{id}, "leaderboard": GET .../leaderboard,
         "preference_scores": {policy_id: {"version", "mean_score", "samples"}},
         "order_by_rating": [policy ids, best first], "order_by_score": [...], "agrees": bool}

    ``preference_scores`` is the preference's mean over each policy's compared samples;
    ``agrees`` says whether the leaderboard's order is the order of those means.
    """
    pref = load_preference(preference) if isinstance(preference, str) else preference
    admin = StudioClient(base_url, token)
    clients: list[StudioClient] = []
    try:
        sets = admin.prompt_sets()
        found = [s for s in sets if s["id"] == prompt_set or s["name"] == prompt_set]
        if not found:
            raise ValueError(f"no prompt set {prompt_set!r}")
        tag = secrets.token_hex(3)
        for i in range(max(1, labelers)):
            user = admin.create_user(f"sim-eval-{tag}-{i}", secrets.token_urlsafe(12))
            clients.append(StudioClient(base_url, admin.create_token(user["id"])))
        ev_id = _evaluate(
            admin, clients, pref,
            name=name or f"simulated {' vs '.join(map(str, policy_ids))} {tag}",
            policy_ids=list(policy_ids), prompt_set_ids=[found[0]["id"]], overlap=overlap, per_pair=per_pair,
            max_prompts=max_prompts, flip_prob=flip_prob, seed=seed, timeout_s=timeout_s, poll_s=poll_s,
        )
        board = admin.get(f"/evaluations/{ev_id}/leaderboard")
        scores = preference_scores(pref, judgments(admin, ev_id))
        by_rating = [row["policy_id"] for row in sorted(board["policies"], key=lambda r: r["rank"])]
        by_score = sorted(scores, key=lambda pid: -scores[pid]["mean_score"])
        return {
            "evaluation_id": ev_id,
            "evaluation": admin.get(f"/evaluations/{ev_id}"),
            "leaderboard": board,
            "preference_scores": scores,
            "order_by_rating": by_rating,
            "order_by_score": by_score,
            "agrees": by_rating == by_score,
        }
    finally:
        for client in clients:
            client.close()
        admin.close()


def evaluation_table(result: dict[str, Any]) -> list[list[str]]:
    """:func:`simulate_evaluation`'s result as rows (header first): per policy, best first,
    its rating with the 95% interval, wins/losses/ties, and the preference's mean score."""

    def num(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    header = ["rank", "policy", "rating", "95% interval", "W/L/T", "preference score", "samples"]
    body = []
    for row in sorted(result["leaderboard"]["policies"], key=lambda r: r["rank"]):
        score = result["preference_scores"].get(row["policy_id"]) or {}
        interval = row.get("rating_interval")
        body.append([
            str(row["rank"]),
            row["label"],
            num(row["rating"], ".0f"),
            f"{interval[0]:.0f}-{interval[1]:.0f}" if interval else "-",
            f"{row['wins']}/{row['losses']}/{row['ties'] + row['both_bad']}",
            num(score.get("mean_score"), ".3f"),
            str(score.get("samples", 0)),
        ])
    return [header, *body]

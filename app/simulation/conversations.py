"""Simulated labelers on a conversation set: rank, continue and demonstrate through the API.

One labeling pass of :class:`app.simulation.loop.Simulation` on a set of kind
``conversation`` (``Simulation.label_pass`` dispatches here). Each labeler claims, in this
order, until nothing is left:

* **rank** tasks: the K replies the sampler wrote for a context are ranked by the
  simulator's preference. A preference is ``(prompt: str, completion: str) -> float``, so it
  cannot take the messages themselves; it sees the conversation's *user turns* joined by
  newlines (:func:`preference_prompt`) as its prompt and the reply as the completion. So a
  prompt-aware preference (``key_term``) judges a second-turn reply against the seed question
  and the follow-up together; ``concise`` reads the reply alone. Labeler noise
  (``flip_prob``) is applied as on any set.
* **continue** tasks: the next user turn, written from a small template bank
  (:data:`FOLLOW_UPS`), chosen and filled deterministically from the run's seed and the
  reply's node id (:func:`follow_up`). A 409 (the reply can no longer be continued: its
  branching is taken, or another labeler wrote the same turn) or a 422 (the turn would pass
  ``max_turns`` / ``max_context_chars``) skips the task.
* **demonstrate** tasks, up to the run's ``demonstrations`` a pass (shared by all labelers):
  the reply is the best of the context's samples of the serving policy under the
  preference, as :meth:`Simulation._demonstrate` writes them (best-of-K), and a context with
  no samples yet is skipped. They are claimed only when nothing is left to rank and nothing
  waits for the sampler, so the context's samples are there.

The sampler answers a new context asynchronously, so a 204 is not the end: a labeler stops
when its ``/tasks/progress`` shows ``rank_left``, ``continue_left`` and
``waiting_for_completions`` at 0 (and ``demonstrate_left`` at 0 while demonstrations are
still wanted), or after ``idle_timeout_s`` without a task, as on a prompt set.

Every context a rank task showed is remembered in ``Simulation.contexts`` (prompt id ->
its user turn and the preference's prompt), so measuring a policy scores its replies in the
same context and a benchmark can pick the contexts of one turn.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.simulation.client import ApiError, StudioClient
from app.simulation.preferences import key_terms, rank_by_preference

if TYPE_CHECKING:
    from app.simulation.loop import Simulation

log = logging.getLogger(__name__)

# Follow-up user turns. "{term}" is one of the reply's key terms; a template with it is
# used only when the reply has one.
FOLLOW_UPS = (
    "Can you make that shorter?",
    "Give me an example.",
    "Why is that?",
    "Can you say that in one sentence?",
    "What is the most important point?",
    "Thanks. Can you explain it to a beginner?",
    "Give me an example of {term}.",
    "What do you mean by {term}?",
    "Why does {term} matter here?",
    "Is there a downside to {term}?",
)


@dataclass
class Context:
    """A context a rank task showed: its user turn and the preference's prompt for it."""

    turn: int
    prompt: str


@dataclass
class PassCounts:
    rankings: int = 0
    continuations: int = 0
    demonstrations: int = 0
    skipped: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)


def preference_prompt(task: dict[str, Any]) -> str:
    """What the preference sees as the prompt of a task's context: its user turns, in order,
    joined by newlines (the task's ``prompt`` when it has no messages)."""
    messages = task.get("messages") or []
    turns = [m["content"] for m in messages if m.get("role") == "user"]
    return "\n".join(turns) if turns else task["prompt"]


def follow_up(seed: int, reply_node_id: int, reply: str) -> str:
    """The next user turn after ``reply``: a template of :data:`FOLLOW_UPS` drawn by an rng
    seeded with (``seed``, ``reply_node_id``), filled with one of the reply's key terms."""
    rng = random.Random(f"{seed}:{reply_node_id}")
    terms = key_terms(reply)
    choices = [t for t in FOLLOW_UPS if terms or "{term}" not in t]
    return rng.choice(choices).format(term=rng.choice(terms) if terms else "")


def label_pass(sim: Simulation, clients: list[StudioClient], policy_id: int) -> tuple[int, int]:
    """One pass of ``clients`` over the conversation set (concurrently); returns (rankings,
    demonstrations). The pass's counts, continuations included, are in ``sim.last_pass``."""
    counts = PassCounts()
    seeds = [sim.rng.randrange(1 << 30) for _ in clients]
    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(lambda c, s: _labeler_loop(sim, c, s, policy_id, counts), clients, seeds))
    sim.last_pass = {"rankings": counts.rankings, "continuations": counts.continuations,
                     "demonstrations": counts.demonstrations, "skipped": counts.skipped}
    sim.progress(f"conversation pass: {sim.last_pass}")
    return counts.rankings, counts.demonstrations


def _labeler_loop(sim: Simulation, client: StudioClient, seed: int, policy_id: int, counts: PassCounts) -> None:
    from app.simulation.loop import noisy

    cfg = sim.cfg
    rng = random.Random(seed)
    set_id = sim.prompt_set["id"]
    idle_since: float | None = None
    while True:
        task = client.next_task(set_id, "rank")
        if task is not None:
            idle_since = None
            prompt = preference_prompt(task)
            sim.contexts[task["prompt_id"]] = Context((task.get("conversation") or {}).get("turn", 1), prompt)
            completions = [(c["id"], c["text"]) for c in task["completions"]]
            ranking = noisy(rank_by_preference(sim.preference, prompt, completions), cfg.flip_prob, rng)
            client.submit_ranking(task["id"], ranking, time_spent_s=0.0)
            counts.add("rankings")
            continue
        task = client.next_task(set_id, "continue")
        if task is not None:
            idle_since = None
            _continue(client, task, cfg.seed, counts)
            continue
        progress = client.get("/tasks/progress", prompt_set_id=set_id)
        wants_demos = counts.demonstrations < cfg.demonstrations
        if wants_demos and progress["rank_left"] == 0 and progress["waiting_for_completions"] == 0:
            task = _claim_demonstration(client, set_id, counts, cfg.demonstrations)
            if task is not None:
                idle_since = None
                _demonstrate(sim, client, task, policy_id, counts)
                continue
            wants_demos = counts.demonstrations < cfg.demonstrations
        left = progress["rank_left"] + progress["continue_left"] + progress["waiting_for_completions"]
        if left == 0 and not (wants_demos and progress["demonstrate_left"]):
            return
        idle_since = idle_since or time.monotonic()
        if time.monotonic() - idle_since > cfg.idle_timeout_s:
            log.warning("labeler gave up after %.0f s without a task: %s", cfg.idle_timeout_s, progress)
            return
        time.sleep(cfg.poll_s)


def _continue(client: StudioClient, task: dict[str, Any], seed: int, counts: PassCounts) -> None:
    reply = task["messages"][-1]["content"] if task.get("messages") else ""
    node_id = (task.get("conversation") or {}).get("reply_node_id") or task["id"]
    text = follow_up(seed, node_id, reply)
    try:
        client.post(f"/tasks/{task['id']}/continuation", {"text": text, "time_spent_s": 0.0})
    except ApiError as exc:
        if exc.status_code not in (409, 422):
            raise
        log.info("continue task %s refused (%s); skipping it", task["id"], exc)
        client.skip(task["id"], f"the reply cannot be continued ({exc.status_code})")
        counts.add("skipped")
        return
    counts.add("continuations")


def _claim_demonstration(client: StudioClient, set_id: int, counts: PassCounts, quota: int) -> dict[str, Any] | None:
    with counts.lock:  # claimed under the lock, so the labelers together write at most ``quota``
        if counts.demonstrations >= quota:
            return None
        task = client.next_task(set_id, "demonstrate")
        if task is not None:
            counts.demonstrations += 1
        return task


def _demonstrate(sim: Simulation, client: StudioClient, task: dict[str, Any], policy_id: int,
                 counts: PassCounts) -> None:
    best = sim.best_sample(task["prompt_id"], policy_id, preference_prompt(task))
    if best is None:
        client.skip(task["id"], "no policy samples to choose from")
        with counts.lock:
            counts.demonstrations -= 1
            counts.skipped += 1
        return
    client.submit_demonstration(task["id"], best)

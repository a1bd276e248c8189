"""Helpers of the tests that run training rounds: a tiny round config, a bootstrapped
policy v0, a prompt set with synthetic labels, queued runs and what they logged.

The fixtures these tests share (``tiny_base``, ``single_torch_thread``) are in
tests/conftest.py; a module that trains opts in to the single torch thread with
``pytestmark = pytest.mark.usefixtures("single_torch_thread")``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from app.config import Settings
from app.db import Database
from app.models import Demonstration, Policy, Prompt, Ranking, RunLog, Task, TrainingRun, User
from app.models.base import utcnow
from app.services import training
from tests.factories import make_completions, make_prompt_set, make_prompts

#: A round config small enough for the tiny model to finish in seconds on a CPU. The
#: defaults are for SmolLM2 on a day's data; here every size is fixed and small, and the
#: gates are opened (a random tiny model learns nothing a gate would accept), except in
#: the tests of the gates themselves.
OPEN_GATES = {
    "rm_gate_min_accuracy": 0.0,
    "deploy_min_score_delta": -1e9,
    "deploy_min_win_rate": 0.0,
    "deploy_max_kl": 1e9,
}
TINY_CONFIG = {
    **OPEN_GATES,
    "sft_batch_size": 4,
    "sft_epochs": 1,
    "sft_min_steps": 0,
    "sft_min_demonstrations": 1,
    "sft_max_length": 96,
    "rm_epochs": 1,
    "rm_min_steps": 0,
    "rm_min_rankings": 2,
    "rm_rankings_per_batch": 4,
    "rm_max_length": 96,
    "rm_normalize_examples": 8,
    "ppo_iterations": 2,
    "ppo_rollout_batch_size": 4,
    "ppo_minibatch_size": 2,
    "ppo_epochs": 1,
    "ppo_max_new_tokens": 8,
    "eval_prompts": 3,
    "eval_samples_per_prompt": 1,
    "eval_max_new_tokens": 8,
}

GOOD = ["a clear and polite answer", "yes, thank you, the answer is clear", "a good answer with the marker token"]
BAD = ["no", "bad", "maybe"]


def fast_settings(settings: Settings, **overrides: object) -> Settings:
    """Settings for in-process rounds: fast polling and heartbeats. The heartbeat timeout
    stays generous, so a round starved of CPU on a loaded machine is not taken for a lost
    worker; the tests of lost workers pass their own short timeout."""
    values = {
        "heartbeat_s": 0.2,
        "heartbeat_timeout_s": 20.0,
        "worker_poll_s": 0.1,
        "buffer_prompts": 4,
        "sampler_batch_size": 4,
        **overrides,
    }
    return settings.model_copy(update=values)


def bootstrap_v0(settings: Settings, database: Database, tiny_base: Path) -> Policy:
    from app.cli.policy import bootstrap_policy

    policy, created = bootstrap_policy(settings, str(tiny_base), database)
    assert created
    return policy


def make_labeler(db, name: str = "lab") -> User:  # type: ignore[no-untyped-def]
    user = User(username=name, password_hash="not-a-real-hash", role="labeler")
    db.add(user)
    db.flush()
    return user


def add_ranking(db, prompt: Prompt, labeler: User, policy_id: int, texts: list[str], **kw) -> Ranking:  # type: ignore[no-untyped-def]
    """K completions ranked in the order given (best first), through a submitted task."""
    policy = db.get(Policy, policy_id)
    completions = make_completions(db, prompt, policy, len(texts), texts=texts)
    task = Task(
        prompt_id=prompt.id,
        prompt_set_id=prompt.prompt_set_id,
        labeler_id=labeler.id,
        kind="rank",
        status="submitted",
        completion_ids=[c.id for c in completions],
        lease_expires_at=utcnow() + timedelta(minutes=30),
        submitted_at=utcnow(),
    )
    db.add(task)
    db.flush()
    ranking = Ranking(
        task_id=task.id,
        prompt_id=prompt.id,
        labeler_id=labeler.id,
        ranking=[[c.id] for c in completions],
        payload_hash=f"h{task.id}",
        **kw,
    )
    db.add(ranking)
    db.flush()
    return ranking


def add_demonstration(db, prompt: Prompt, labeler: User, text: str, **kw) -> Demonstration:  # type: ignore[no-untyped-def]
    task = Task(
        prompt_id=prompt.id,
        prompt_set_id=prompt.prompt_set_id,
        labeler_id=labeler.id,
        kind="demonstrate",
        status="submitted",
        lease_expires_at=utcnow() + timedelta(minutes=30),
    )
    db.add(task)
    db.flush()
    demo = Demonstration(task_id=task.id, prompt_id=prompt.id, labeler_id=labeler.id, text=text, payload_hash=f"d{task.id}", **kw)
    db.add(demo)
    db.flush()
    return demo


def labeled_set(
    database: Database,
    policy_id: int,
    name: str = "train-set",
    *,
    rankings: int = 6,
    demonstrations: int = 4,
    train_prompts: int = 8,
    validation_prompts: int = 2,
) -> int:
    """A prompt set with synthetic rankings (good texts above bad ones) and demonstrations."""
    with database.session() as db:
        ps = make_prompt_set(db, name, k=3, sampling={"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8})
        train = make_prompts(db, ps, [f"Question {i}: please answer clearly." for i in range(train_prompts)])
        val = make_prompts(db, ps, [f"Validation question {i}?" for i in range(validation_prompts)], split="validation")
        labeler = make_labeler(db, f"{name}-labeler")
        ranked = (train + val)[:rankings] if rankings <= len(train) else (train + val)[:rankings]
        for i, prompt in enumerate(ranked):
            add_ranking(db, prompt, labeler, policy_id, [GOOD[i % 3] + f" {i}", "meh", BAD[i % 3] + f" {i}"])
        for i, prompt in enumerate(train[:demonstrations]):
            add_demonstration(db, prompt, labeler, f"{GOOD[i % 3]} number {i}")
        return ps.id


def create_run(database: Database, set_ids: list[int], **kw: object) -> int:
    with database.session() as db:
        kw.setdefault("config", TINY_CONFIG)
        run = training.create_round(db, None, set_ids, **kw)  # type: ignore[arg-type]
        return run.id


def run_state(database: Database, run_id: int) -> TrainingRun:
    with database.session() as db:
        run = db.get(TrainingRun, run_id)
        assert run is not None
        db.expunge(run)
        return run


def logs_of(database: Database, run_id: int) -> str:
    with database.session() as db:
        return "\n".join(db.scalars(select(RunLog.message).where(RunLog.run_id == run_id).order_by(RunLog.id)))

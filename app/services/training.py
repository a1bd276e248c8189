"""Training rounds as seen by the web tier: create (queue), list, inspect, cancel.

A round is a ``TrainingRun`` row; trainer workers pick it up (app/services/workers.py,
trainer/worker.py) and write progress, logs and metric series back as it goes. The
round's ``config`` is a flat dict of the keys in :data:`ROUND_CONFIG`; anything else is
rejected here, before a worker ever sees it. docs/trainer.md documents every key.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import PromptSet, RunLog, RunMetric, TrainingRun, User
from app.models.base import utcnow
from app.models.training import STAGES
from app.services import audit
from app.services.errors import Conflict, Invalid, NotFound

FINISHED = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class ConfigKey:
    name: str
    default: Any
    help: str
    minimum: float | None = None  # inclusive
    maximum: float | None = None  # inclusive
    choices: tuple[str, ...] | None = None
    nullable: bool = False

    @property
    def type(self) -> type:
        return type(self.default) if self.default is not None else float


def _k(name: str, default: Any, help: str, **kw: Any) -> ConfigKey:
    return ConfigKey(name, default, help, **kw)


#: Every key a round's ``config`` may set, with its default (small enough that a round on
#: the tiny test model finishes in seconds; raise them for real runs).
ROUND_CONFIG: dict[str, ConfigKey] = {
    c.name: c
    for c in [
        _k("seed", 0, "random seed of every stage", minimum=0),
        # SFT
        _k("sft_epochs", 1, "passes over the demonstrations", minimum=1, maximum=100),
        _k("sft_lr", 2e-5, "SFT learning rate", minimum=0, maximum=1),
        _k("sft_batch_size", 8, "demonstrations per optimizer step", minimum=1, maximum=4096),
        _k("sft_max_length", 512, "tokens per prompt + demonstration", minimum=16, maximum=32768),
        _k("sft_min_demonstrations", 1, "fewer demonstrations than this skip SFT", minimum=1),
        _k("sft_demonstrations", "new",
           "new: only demonstrations the starting policy's lineage has not been fine-tuned on; all: every one",
           choices=("new", "all")),
        # Reward model
        _k("rm_epochs", 1, "passes over the rankings", minimum=1, maximum=100),
        _k("rm_lr", 1e-5, "reward-model learning rate", minimum=0, maximum=1),
        _k("rm_rankings_per_batch", 8, "rankings (all their K choose 2 pairs) per step", minimum=1, maximum=4096),
        _k("rm_max_length", 512, "tokens per prompt + completion", minimum=16, maximum=32768),
        _k("rm_min_rankings", 2, "fewer usable rankings than this skip the RM stage", minimum=1),
        _k("rm_holdout_fraction", 0.1, "share of train rankings held out when no validation ranking exists",
           minimum=0, maximum=0.5),
        _k("rm_unacceptable", "keep", "rankings flagged all-unacceptable: keep or skip", choices=("keep", "skip")),
        _k("rm_normalize_examples", 64, "demonstrations (or policy samples) that set the reward bias", minimum=1),
        # PPO
        _k("ppo_iterations", 8, "rollout + update iterations", minimum=1, maximum=100000),
        _k("ppo_rollout_batch_size", 8, "prompts sampled per iteration", minimum=1, maximum=4096),
        _k("ppo_minibatch_size", 4, "episodes per PPO minibatch (divides the rollout batch)", minimum=1),
        _k("ppo_epochs", 2, "passes over each rollout", minimum=1, maximum=64),
        _k("ppo_lr", 3e-6, "policy (and value) learning rate", minimum=0, maximum=1),
        _k("ppo_kl_coef", 0.02, "per-token KL penalty to the SFT policy", minimum=0),
        _k("ppo_max_new_tokens", 48, "tokens sampled per response", minimum=1, maximum=8192),
        _k("ppo_temperature", 0.7, "sampling temperature of rollouts and evaluation", minimum=0.01, maximum=10),
        _k("ppo_ptx_coef", 0.0, "weight of the PPO-ptx LM loss on demonstrations", minimum=0),
        _k("ppo_max_prompts", 256, "train prompts PPO draws from", minimum=1),
        # Evaluation
        _k("eval_prompts", 32, "validation prompts for win rate / KL against the previous policy", minimum=1),
        _k("eval_max_new_tokens", 48, "tokens sampled per evaluation response", minimum=1, maximum=8192),
    ]
}


#: Share of a run's progress bar each part takes (renormalised over the parts that run).
PROGRESS_WEIGHTS = {"snapshot": 0.03, "sft": 0.25, "rm": 0.25, "ppo": 0.37, "evaluate": 0.07, "promote": 0.03}


def progress_plan(stages: list[str]) -> dict[str, tuple[float, float]]:
    """``part -> (start, span)`` on the 0..1 progress scale for a run with these stages."""
    parts = ["snapshot", *[s for s in STAGES if s in stages], "evaluate", "promote"]
    total = sum(PROGRESS_WEIGHTS[p] for p in parts)
    plan, at = {}, 0.0
    for part in parts:
        span = PROGRESS_WEIGHTS[part] / total
        plan[part] = (at, span)
        at += span
    return plan


def config_defaults() -> dict[str, Any]:
    return {name: key.default for name, key in ROUND_CONFIG.items()}


def validate_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """Check a round config against :data:`ROUND_CONFIG`; returns the given keys, normalised."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise Invalid("config must be a JSON object")
    unknown = sorted(set(config) - set(ROUND_CONFIG))
    if unknown:
        raise Invalid(f"unknown config key(s): {', '.join(unknown)} (known: {', '.join(ROUND_CONFIG)})")
    clean: dict[str, Any] = {}
    for name, value in config.items():
        key = ROUND_CONFIG[name]
        if key.choices is not None:
            if value not in key.choices:
                raise Invalid(f"config {name} must be one of {', '.join(key.choices)}")
            clean[name] = value
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"config {name} must be a number")
        if key.type is int:
            if float(value) != int(value):
                raise Invalid(f"config {name} must be a whole number")
            value = int(value)
        else:
            value = float(value)
        if key.minimum is not None and value < key.minimum:
            raise Invalid(f"config {name} must be at least {key.minimum:g}")
        if key.maximum is not None and value > key.maximum:
            raise Invalid(f"config {name} must be at most {key.maximum:g}")
        clean[name] = value
    merged = {**config_defaults(), **clean}
    if merged["ppo_rollout_batch_size"] % merged["ppo_minibatch_size"]:
        raise Invalid("config ppo_rollout_batch_size must be a multiple of ppo_minibatch_size")
    return clean


def validate_stages(stages: list[str] | None) -> list[str]:
    if stages is None:
        return list(STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise Invalid(f"unknown stage(s): {', '.join(map(str, unknown))} (stages: {', '.join(STAGES)})")
    if not stages:
        raise Invalid("give at least one stage (sft, rm, ppo)")
    return [s for s in STAGES if s in stages]


def create_round(
    db: Session,
    actor: User | None,
    prompt_set_ids: list[int],
    stages: list[str] | None = None,
    deploy: bool = False,
    config: dict[str, Any] | None = None,
) -> TrainingRun:
    """Queue a training round over the given prompt sets; a worker picks it up.

    The data is fixed when a worker starts the run (its snapshot), not here.
    """
    if not prompt_set_ids:
        raise Invalid("give at least one prompt set")
    ids = list(dict.fromkeys(int(i) for i in prompt_set_ids))
    found = set(db.scalars(select(PromptSet.id).where(PromptSet.id.in_(ids))))
    missing = [i for i in ids if i not in found]
    if missing:
        raise Invalid(f"prompt set(s) {', '.join(map(str, missing))} do not exist")
    run = TrainingRun(
        kind="round",
        status="queued",
        prompt_set_ids=ids,
        stages=validate_stages(stages),
        deploy=bool(deploy),
        config=validate_config(config),
        created_by_id=actor.id if actor else None,
    )
    db.add(run)
    db.flush()
    audit.record(
        db, actor, "training.round_create", "training_run", run.id,
        prompt_set_ids=ids, stages=run.stages, deploy=run.deploy, config=run.config,
    )
    return run


def list_runs(db: Session, limit: int = 50) -> list[TrainingRun]:
    """Newest first."""
    return list(db.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(max(1, min(limit, 1000)))))


def get_run(db: Session, run_id: int) -> TrainingRun:
    run = db.get(TrainingRun, run_id)
    if run is None:
        raise NotFound(f"training run {run_id} does not exist")
    return run


def metric_series(db: Session, run_id: int) -> dict[str, list[tuple[int, float]]]:
    """The run's metric series keyed ``"stage/name"`` (``sft/loss``, ``rm/accuracy``,
    ``ppo/reward``, ``ppo/kl``, ``ppo/entropy``, ``eval/win_rate``, ...), each sorted by step."""
    get_run(db, run_id)
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    rows = db.execute(
        select(RunMetric.stage, RunMetric.name, RunMetric.step, RunMetric.value)
        .where(RunMetric.run_id == run_id)
        .order_by(RunMetric.stage, RunMetric.name, RunMetric.step, RunMetric.id)
    )
    for stage, name, step, value in rows:
        series[f"{stage}/{name}"].append((int(step), float(value)))
    return dict(series)


def run_logs(db: Session, run_id: int, limit: int = 200, after_id: int | None = None) -> list[RunLog]:
    """The last ``limit`` log lines of a run in the order written (or those after ``after_id``)."""
    get_run(db, run_id)
    query = select(RunLog).where(RunLog.run_id == run_id)
    if after_id is not None:
        query = query.where(RunLog.id > after_id)
        return list(db.scalars(query.order_by(RunLog.id).limit(max(1, limit))))
    return list(reversed(list(db.scalars(query.order_by(RunLog.id.desc()).limit(max(1, limit))))))


def cancel_run(db: Session, actor: User | None, run_id: int) -> TrainingRun:
    """Cancel a run: a queued one at once, a running one at the worker's next step."""
    run = get_run(db, run_id)
    if run.status in FINISHED:
        raise Conflict(f"training run {run_id} already {run.status}")
    if run.status == "queued":
        run.status = "cancelled"
        run.finished_at = utcnow()
        db.add(RunLog(run_id=run.id, level="warning", message="cancelled before a worker started it"))
    else:
        run.cancel_requested = True
        db.add(RunLog(run_id=run.id, level="warning", message="cancel requested; stopping at the next step"))
    audit.record(db, actor, "training.run_cancel", "training_run", run.id, status=run.status)
    db.flush()
    return run


def snapshot_summary(run: TrainingRun) -> dict[str, Any]:
    """The snapshot without its id lists (counts and hash), for API answers and pages."""
    snap = run.snapshot or {}
    return {k: v for k, v in snap.items() if k != "ids"}

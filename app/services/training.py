"""Training rounds as seen by the web tier: create (queue), list, inspect, cancel.

A round is a ``TrainingRun`` row; trainer workers pick it up (app/services/workers.py,
trainer/worker.py) and write progress, logs and metric series back as it goes. The
round's ``config`` is a flat dict of the keys in :data:`ROUND_CONFIG`; anything else is
rejected here, before a worker ever sees it. docs/trainer.md documents every key.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import PromptSet, RunLog, RunMetric, TrainingRun, User
from app.models.base import utcnow
from app.models.training import DEFAULT_STAGES, POLICY_OPTIMISERS, STAGES
from app.services import audit, red_team, webhook_events
from app.services.errors import Conflict, Invalid, NotFound
from trainer.config import (
    ROUND_KEYS,
    ConfigError,
    RoundKey,
    validate_round_config,
)

FINISHED = ("succeeded", "failed", "cancelled")

#: Every key a round's ``config`` may set, derived from the stage configs (trainer/config.py,
#: torch-free): the API's ``GET /training/config``, this validation and the dashboard list.
ROUND_CONFIG: dict[str, RoundKey] = ROUND_KEYS


#: Share of a run's progress bar each part takes (renormalised over the parts that run).
PROGRESS_WEIGHTS = {
    "snapshot": 0.03, "sft": 0.2, "rm": 0.25, "ppo": 0.37, "dpo": 0.37, "evaluate": 0.1, "promote": 0.03,
}


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


def validate_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """Check a round config against :data:`ROUND_CONFIG`; returns the given keys, normalised."""
    try:
        return validate_round_config(config)
    except ConfigError as exc:
        raise Invalid(str(exc)) from exc


def validate_stages(stages: list[str] | None) -> list[str]:
    if stages is None:
        return list(DEFAULT_STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise Invalid(f"unknown stage(s): {', '.join(map(str, unknown))} (stages: {', '.join(STAGES)})")
    if not stages:
        raise Invalid(f"give at least one stage ({', '.join(STAGES)})")
    if all(s in stages for s in POLICY_OPTIMISERS):
        raise Invalid(f"choose one of {' or '.join(POLICY_OPTIMISERS)}: both optimise the policy from the same start")
    return [s for s in STAGES if s in stages]


def create_round(
    db: Session,
    actor: User | None,
    prompt_set_ids: list[int],
    stages: list[str] | None = None,
    deploy: bool | str = False,
    config: dict[str, Any] | None = None,
) -> TrainingRun:
    """Queue a training round over the given prompt sets; a worker picks it up.

    ``deploy``: False (register only), True (deploy through the deploy gate) or
    ``"force"`` (deploy even when the gate refuses). The data is fixed when a worker
    starts the run (its snapshot), not here. A red-team set no admin promoted is refused
    (app/services/red_team.py).
    """
    if deploy not in (True, False, "force"):
        raise Invalid('deploy must be true, false or "force"')
    if not prompt_set_ids:
        raise Invalid("give at least one prompt set")
    ids = list(dict.fromkeys(int(i) for i in prompt_set_ids))
    found = set(db.scalars(select(PromptSet.id).where(PromptSet.id.in_(ids))))
    missing = [i for i in ids if i not in found]
    if missing:
        raise Invalid(f"prompt set(s) {', '.join(map(str, missing))} do not exist")
    held = red_team.unpromoted(db, ids)
    if held:
        raise Invalid(
            f"prompt set(s) {', '.join(map(str, held))} are red-team sets that were never promoted: an admin "
            "promotes one (POST /api/v1/prompt-sets/{id}/red-team/promote) before a round trains on it"
        )
    run = TrainingRun(
        kind="round",
        status="queued",
        prompt_set_ids=ids,
        stages=validate_stages(stages),
        deploy=bool(deploy),
        deploy_force=deploy == "force",
        config=validate_config(config),
        created_by_id=actor.id if actor else None,
    )
    db.add(run)
    db.flush()
    audit.record(
        db, actor, "training.round_create", "training_run", run.id,
        prompt_set_ids=ids, stages=run.stages, deploy=deploy_mode(run), config=run.config,
    )
    return run


def deploy_mode(run: TrainingRun) -> bool | str:
    """The round's ``deploy`` as the API spells it: false, true or "force"."""
    return "force" if run.deploy and run.deploy_force else bool(run.deploy)


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
        db.flush()
        webhook_events.round_finished(db, run.id)
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


def gate_lines(run: TrainingRun) -> list[str]:
    """The run's gates as sentences, for the CLI and the run page ("rm gate passed: ...")."""
    found = (run.metrics or {}).get("gates") or {}
    lines: list[str] = []
    rm = found.get("rm")
    if rm:
        lines.append(f"RM gate {'passed' if rm.get('passed') else 'failed'}: " + (rm.get("reason") or _figure(
            "held-out accuracy", rm)))
    deploy = found.get("deploy")
    if deploy:
        verdict = "passed" if deploy.get("passed") else "refused"
        checks = "; ".join(
            (c.get("reason") if not c.get("passed") and c.get("reason") else _figure(c.get("name", "check"), c))
            for c in deploy.get("checks") or []
        )
        lines.append(f"deploy gate {verdict}: {checks}" + (
            " (score and win rate advisory: humans judge)" if deploy.get("judged_by") == "humans" else ""))
    human = found.get("human")
    if human:
        where = f" (evaluation {human['evaluation_id']})" if human.get("evaluation_id") else ""
        lines.append(f"human gate {human.get('status', 'pending')}{where}: {human.get('reason') or ''}".rstrip(": "))
    return lines


def _figure(label: str, gate: dict[str, Any]) -> str:
    value, low, high = gate.get("value"), gate.get("low"), gate.get("high")
    if value is None:
        return f"{label}: {gate.get('reason') or 'not measured'}"
    text = f"{label.replace('_', ' ')} {value:.3g}"
    if low is not None and high is not None:
        text += f" (interval {low:.3g} to {high:.3g}, n={gate.get('n')})"
    return text

"""The webhook events: where each one happens, and its payload (docs/webhooks.md).

Each function here is called by the service that makes the change, inside its
transaction, and hands :func:`app.services.webhooks.emit` the event's ``data``:

* ``round.finished``: a training run ends (succeeded, failed, cancelled), from
  :func:`app.services.workers.finish_run` (every end a worker writes, in-process or
  launched), :func:`~app.services.workers.reap_stale_runs` (a run failed after its worker
  was lost) and :func:`app.services.training.cancel_run` (a queued run cancelled);
* ``policy.deployed``: :func:`app.services.policies.deploy_policy` switched the deployed
  policy (by hand, by a round, or by a human verdict);
* ``prompt_set.completed``: a ranking filled the last rank slot of a set for the deployed
  policy (:func:`app.services.submissions.submit_ranking`); sent once per set and policy.
  The set's ``slot_totals`` row says cheaply when slots are still free; only when none is
  does the full progress count run. (On PostgreSQL, two last rankings committed at the
  same moment may each see the other's slot unfilled, and the event is then not sent);
* ``evaluation.finished``: the judgment that completes an evaluation
  (app/services/compare_tasks.py) or its closing (``evaluations.set_status``); sent once
  per evaluation, after a round's human gate settled on it.

Each first asks whether any hook wants the event, so without hooks an event costs one
small read and no payload is built.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import ComparisonJudgment, Evaluation, Policy, PromptSet, SlotTotals, TrainingRun, User
from app.services import webhooks


def _version(db: Session, policy_id: int | None) -> int | None:
    return db.scalar(select(Policy.version).where(Policy.id == policy_id)) if policy_id is not None else None


def round_finished(db: Session, run_id: int) -> None:
    """``round.finished``: the run as it ended (read back after the caller's update)."""
    if not webhooks.wanted(db, "round.finished"):
        return
    run = db.scalars(
        select(TrainingRun).where(TrainingRun.id == run_id).execution_options(populate_existing=True)
    ).one()
    metrics = run.metrics or {}
    webhooks.emit(db, "round.finished", {
        "run_id": run.id,
        "status": run.status,
        "stage": run.stage,
        "error": run.error,
        "summary": metrics.get("summary"),
        "gates": metrics.get("gates") or {},
        "policy_id": run.policy_id,
        "policy_version": _version(db, run.policy_id),
        "deployed": bool(metrics.get("deployed", False)),
        "base_policy_id": run.base_policy_id,
        "prompt_set_ids": list(run.prompt_set_ids or []),
        "stages": list(run.stages or []),
        "attempts": run.attempts,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }, dedupe_key=f"round.finished:{run.id}")


def policy_deployed(db: Session, actor: User | None, policy: Policy, previous: Policy | None, reason: str | None) -> None:
    """``policy.deployed``: ``policy`` now serves, in place of ``previous``."""
    if not webhooks.wanted(db, "policy.deployed"):
        return
    webhooks.emit(db, "policy.deployed", {
        "policy_id": policy.id,
        "version": policy.version,
        "previous_policy_id": previous.id if previous else None,
        "previous_version": previous.version if previous else None,
        "training_run_id": policy.training_run_id,
        "reason": reason,
        "deployed_by": actor.username if actor else None,
        "deployed_at": policy.deployed_at,
    })


def ranking_stored(db: Session, prompt_set_id: int) -> None:
    """After a new ranking: ``prompt_set.completed`` when the set's rank slots are all filled."""
    if not webhooks.wanted(db, "prompt_set.completed"):
        return
    deployed = db.scalar(select(Policy).where(Policy.deployed.is_(True)))
    if deployed is not None and db.scalar(select(SlotTotals.open).where(
        SlotTotals.prompt_set_id == prompt_set_id, SlotTotals.kind == "rank", SlotTotals.policy_id == deployed.id
    )):
        return  # a served pair of the deployed policy has a free slot (one row read): not complete
    from app.services.set_progress import progress  # noqa: PLC0415 - set_progress imports the claims' modules

    found = progress(db, prompt_set_id)
    if not found:
        return
    total = found[0].total
    if not total.slots or total.slots_filled < total.slots:
        return
    ps = db.get(PromptSet, prompt_set_id)
    webhooks.emit(db, "prompt_set.completed", {
        "prompt_set_id": prompt_set_id,
        "name": ps.name if ps else None,
        "policy_id": deployed.id if deployed else None,
        "policy_version": deployed.version if deployed else None,
        "prompts": total.prompts,
        "slots": total.slots,
        "rankings": total.rankings,
        "comparisons": total.comparisons,
        "demonstrations": total.demonstrations,
    }, dedupe_key=f"prompt_set.completed:{prompt_set_id}:policy:{deployed.id if deployed else 0}")


def evaluation_judged(db: Session, evaluation_id: int) -> None:
    """After a judgment: ``evaluation.finished`` when every comparison has its judgments."""
    if not webhooks.wanted(db, "evaluation.finished"):
        return
    from app.services.human_gate import all_judged  # noqa: PLC0415 - human_gate imports workers, which imports this

    ev = db.get(Evaluation, evaluation_id)
    if ev is not None and all_judged(db, ev):
        _evaluation_finished(db, ev, "complete")


def evaluation_closed(db: Session, ev: Evaluation) -> None:
    """``evaluation.finished`` for an evaluation an admin closed (unless it was sent on completion)."""
    if webhooks.wanted(db, "evaluation.finished"):
        _evaluation_finished(db, ev, "closed")


def _evaluation_finished(db: Session, ev: Evaluation, reason: str) -> None:
    judgments = db.scalar(
        select(func.count(ComparisonJudgment.id)).where(
            ComparisonJudgment.evaluation_id == ev.id, ComparisonJudgment.status == "active"
        )
    )
    versions = {pid: v for pid, v in db.execute(select(Policy.id, Policy.version).where(Policy.id.in_(ev.policy_ids or [])))}
    gate = None
    if ev.training_run_id is not None:
        run = db.get(TrainingRun, ev.training_run_id)
        gate = ((run.metrics or {}).get("gates") or {}).get("human") if run else None
    webhooks.emit(db, "evaluation.finished", {
        "evaluation_id": ev.id,
        "name": ev.name,
        "reason": reason,
        "status": ev.status,
        "policy_ids": list(ev.policy_ids or []),
        "policy_versions": [versions.get(pid) for pid in ev.policy_ids or []],
        "judgments": int(judgments or 0),
        "training_run_id": ev.training_run_id,
        "human_gate": gate,
    }, dedupe_key=f"evaluation.finished:{ev.id}")


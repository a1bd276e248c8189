"""The human deploy gate of a round with ``evaluate_with_humans`` (docs/evaluations.md).

The round registers its new policy, keeps the parent deployed and calls
:func:`open_for_round` in the transaction that ends the run: it creates a blind evaluation
of new vs parent on the validation split of the round's prompt sets (the worker's
evaluation sampler writes the missing samples of both) and records the gate, ``pending``,
in the run's ``metrics["gates"]["human"]``.

The verdict is in when every comparison of the pair has its ``overlap`` judgments, or
when an admin closes the evaluation. :func:`settle` runs in the transaction of the
judgment that completes it (``POST /tasks/{id}/comparison``) or of the close
(``POST /evaluations/{id}/status``): it reads :func:`app.services.evaluations.verdict`
with the round's ``human_eval_threshold`` and, when the new policy is at least as good as
its parent, deploys it (if the round asked to deploy and its parent still serves), else
refuses it; the reason goes into the gate, the run's summary and its log. The run row is
locked first, so two judgments that complete an evaluation at once settle it once.
Waiting for the whole evaluation (rather than stopping when an interval first clears the
threshold) keeps the verdict free of the optimism of peeking.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import ComparisonJudgment, Evaluation, EvaluationComparison, Policy, TrainingRun, User
from app.services import evaluations, policies, workers
from app.services.errors import Conflict, Invalid
from trainer.config import stage_configs

GATE = "human"


def _with_gate(run: TrainingRun, gate: dict[str, Any], summary_note: str = "", **extra: Any) -> None:
    """Store ``gate`` in the run's metrics (a new dict, so the JSON column is written)."""
    metrics = dict(run.metrics or {})
    metrics["gates"] = {**(metrics.get("gates") or {}), GATE: gate}
    if summary_note:
        metrics["summary"] = (metrics.get("summary") or "") + summary_note
    metrics.update(extra)
    run.metrics = metrics


def open_for_round(
    db: Session,
    run: TrainingRun,
    policy: Policy,
    parent_id: int,
    *,
    deploy_on_verdict: bool,
    held_back: str = "",
) -> tuple[dict[str, Any], str]:
    """Create the round's human evaluation of ``policy`` against ``parent_id``; returns
    the gate (for the run's ``metrics["gates"]["human"]``) and the note for its summary.

    ``deploy_on_verdict``: the round asked to deploy and nothing else stopped it (the KL
    budget, ``deploy: "force"``); ``held_back`` says why not otherwise. Without validation
    prompts in the round's sets no evaluation is made and the gate is refused at once.
    """
    cfg = stage_configs(run.config or {}).human_eval
    parent = db.get(Policy, parent_id)
    parent_label = f"v{parent.version}" if parent is not None else f"policy {parent_id}"
    gate: dict[str, Any] = {
        "name": "human_verdict",
        "status": "pending",
        "passed": None,
        "evaluation_id": None,
        "new_policy_id": policy.id,
        "parent_policy_id": parent_id,
        "threshold": cfg.threshold,
        "deploy_on_verdict": deploy_on_verdict,
        "deployed": False,
        "reason": "",
        "verdict": None,
    }
    name = f"run {run.id}: v{policy.version} vs {parent_label}"
    taken = set(db.scalars(select(Evaluation.name).where(Evaluation.name.like(f"{name}%"))))
    suffix = 2
    while name in taken:
        name, suffix = f"run {run.id}: v{policy.version} vs {parent_label} ({suffix})", suffix + 1
    try:
        with db.begin_nested():
            ev = evaluations.create_evaluation(
                db,
                db.get(User, run.created_by_id) if run.created_by_id else None,
                name=name,
                policy_ids=[parent_id, policy.id],
                prompt_set_ids=list(run.prompt_set_ids or []),
                split="validation",
                max_prompts=cfg.prompts,
                per_pair=cfg.per_pair,
                overlap=cfg.overlap,
                description=f"evaluate_with_humans of training run {run.id}: is v{policy.version} at least as good "
                f"as its parent {parent_label}?",
                seed=(run.id * 7919 + int((run.config or {}).get("seed", 0))) % 2**31,
            )
            ev.training_run_id = run.id
            db.flush()
    except (Invalid, Conflict) as exc:
        gate.update(status="refused", passed=False, reason=f"no human evaluation could be made: {exc.message}")
        return gate, f"; not deployed: {gate['reason']}"
    gate["evaluation_id"] = ev.id
    comparisons = evaluations.evaluation_view(db, ev)["comparisons"]
    wait = (
        f"; waiting for the human evaluation {ev.id} ({comparisons} comparisons x {cfg.overlap} labeler(s), "
        f"win rate >= {cfg.threshold:g} against {parent_label})"
    )
    if deploy_on_verdict:
        gate["reason"] = f"waiting for the verdict of evaluation {ev.id}; {parent_label} stays deployed until then"
        return gate, wait + f"; {parent_label} stays deployed until the verdict"
    gate["reason"] = f"the verdict of evaluation {ev.id} is recorded only{': ' + held_back if held_back else ''}"
    return gate, wait + (f" (recorded only: {held_back})" if held_back else " (recorded only)")


def pending_run(db: Session, ev: Evaluation) -> TrainingRun | None:
    """The run (locked) whose human gate waits for ``ev``, or None."""
    if ev.training_run_id is None:
        return None
    run = db.scalar(
        select(TrainingRun)
        .where(TrainingRun.id == ev.training_run_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if run is None:
        return None
    gate = ((run.metrics or {}).get("gates") or {}).get(GATE) or {}
    if gate.get("status") != "pending" or gate.get("evaluation_id") != ev.id:
        return None
    return run


def settle(db: Session, evaluation_id: int) -> dict[str, Any] | None:
    """Apply the verdict to the round waiting for this evaluation, once it is in (every
    comparison judged, or the evaluation closed); returns the settled gate, or None when
    there is nothing to settle yet. Run it inside the caller's write transaction."""
    ev = db.get(Evaluation, evaluation_id)
    if ev is None:
        return None
    run = pending_run(db, ev)
    if run is None:
        return None
    if ev.status != "closed" and not all_judged(db, ev):
        return None  # a cheap count first: most judgments do not complete the evaluation
    gate = dict(((run.metrics or {}).get("gates") or {})[GATE])
    new_id, parent_id = int(gate["new_policy_id"]), int(gate["parent_policy_id"])
    found = evaluations.verdict(db, ev.id, new_id, parent_id, threshold=float(gate["threshold"]))
    if not found["complete"] and ev.status != "closed":
        return None
    new, parent = db.get(Policy, new_id), db.get(Policy, parent_id)
    new_label = f"v{new.version}" if new else f"policy {new_id}"
    parent_label = f"v{parent.version}" if parent else f"policy {parent_id}"
    figures = _figures(found)
    passed = bool(found["at_least_as_good"])
    gate.update(status="passed" if passed else "refused", passed=passed, verdict=found)
    deployed = False
    if not passed:
        why = "the evaluation was closed before every comparison was judged, and " if not found["complete"] else ""
        gate["reason"] = (
            f"humans do not find {new_label} at least as good as {parent_label}: {why}{figures}, "
            f"threshold {found['threshold']:g}"
        )
        note = f"; human verdict: not deployed: {gate['reason']}"
    elif not gate.get("deploy_on_verdict"):
        gate["reason"] = f"humans find {new_label} at least as good as {parent_label} ({figures}); recorded only"
        note = f"; human verdict: at least as good ({figures})"
    else:
        serving = policies.deployed_policy(db)
        if serving is not None and serving.id not in (parent_id, new_id):
            gate["reason"] = (
                f"humans find {new_label} at least as good as {parent_label} ({figures}), but v{serving.version} was "
                f"deployed meanwhile: {new_label} is not deployed over it (deploy it by hand if wanted)"
            )
            note = f"; human verdict passed but not deployed: v{serving.version} was deployed meanwhile"
        else:
            actor = db.get(User, run.created_by_id) if run.created_by_id else None
            try:
                policies.deploy_policy(
                    db, actor, new_id, reason=f"human evaluation {ev.id} of training run {run.id}"
                )
                deployed = True
                gate["reason"] = f"humans find {new_label} at least as good as {parent_label} ({figures}); deployed"
                note = f"; human verdict: deployed ({figures})"
            except Conflict as exc:
                gate["reason"] = f"humans find {new_label} at least as good, but it could not be deployed: {exc.message}"
                note = f"; human verdict passed but not deployed: {exc.message}"
    gate["deployed"] = deployed
    _with_gate(run, gate, note, **({"deployed": True} if deployed else {}))
    workers.add_log(db, run.id, f"human gate {gate['status']}: {gate['reason']}", "info" if passed else "warning")
    db.flush()
    return gate


def all_judged(db: Session, ev: Evaluation) -> bool:
    """Whether every regular comparison of ``ev`` has its ``overlap`` active judgments."""
    regular = (EvaluationComparison.evaluation_id == ev.id, EvaluationComparison.gold_outcome.is_(None))
    slots = (db.scalar(select(func.count(EvaluationComparison.id)).where(*regular)) or 0) * ev.overlap
    judged = db.scalar(
        select(func.count(ComparisonJudgment.id))
        .join(EvaluationComparison, EvaluationComparison.id == ComparisonJudgment.comparison_id)
        .where(*regular, ComparisonJudgment.status == "active")
    ) or 0
    return slots > 0 and judged >= slots


def _figures(found: dict[str, Any]) -> str:
    rate, interval = found.get("win_rate"), found.get("win_rate_interval") or [None, None]
    if rate is None:
        return "no judgments"
    low, high = interval
    return (
        f"win rate {rate:.2f} (95% interval {low:.2f}-{high:.2f}) over {found['comparisons']} judgment(s): "
        f"{found['wins']} wins, {found['losses']} losses, {found['ties']} ties, {found['both_bad']} both bad"
    )

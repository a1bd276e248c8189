"""One training round, as InstructGPT: SFT -> reward model -> PPO (or DPO) -> evaluate -> register.

:meth:`_Round.run` reads as the list of its phases; each stage returns a
:class:`StageOutcome` (ran, or skipped with the reason). The round never silently makes
things worse:

1. **Snapshot.** The ids of the active rankings and demonstrations of the round's sets
   created before the run started are fixed (trainer/data.py); a retry reuses them.
2. **SFT** on the demonstrations the starting policy's lineage has not been fine-tuned on
   (``sft_demonstrations: new``), from the deployed policy. Skipped with the reason when
   there are fewer than ``sft_min_demonstrations``.
3. **RM** from the SFT model with a scalar head (or warm-started from the previous RM,
   ``rm_init``), trained until held-out accuracy stops improving, best epoch kept; the
   bias is set so demonstrations (else policy samples) score mean 0; saved to
   ``reward_models/vN``. Then the **RM gate** (trainer/gates.py): PPO runs only on an RM
   above chance on held-out rankings.
4. **SFT selection by reward**: when SFT ran several epochs and the RM is usable, the
   epoch whose validation samples the RM scores best is kept (InstructGPT).
5. **PPO** from the SFT policy against the RM, with the KL reference ``ppo_kl_reference``;
   or **DPO** on the same rankings (``stages: ["sft", "dpo"]``).
6. **Evaluate** the new policy against its parent (and v0) under the RM, with intervals.
7. **Promote**: the policy is written to a staging directory, published as
   ``policies/vN`` (trainer/artifacts.py) and registered in the transaction that ends the
   run. ``deploy: true`` deploys it only through the **deploy gate**; ``"force"`` always.
   With ``evaluate_with_humans`` the round opens a human evaluation of it against its
   parent instead, and the verdict deploys or refuses it later (app/services/human_gate.py).
   A worker killed at any point leaves at most an unregistered directory.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import math
import random
import shutil
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from app.config import Settings
from app.db import Database
from app.models import Policy, TrainingRun, User
from app.services import human_gate, policies, training, workers
from app.services.errors import Conflict
from trainer import artifacts, faults, gates
from trainer.config import (
    StageConfigs,
    derive_ppo_iterations,
    stage_configs,
    with_sampling,
)
from trainer.data import (
    RoundData,
    demonstrations_trained_by,
    load_round_data,
    round_sampling,
    take_snapshot,
)
from trainer.run_control import LeaseLost, RoundError, RunControl

__all__ = ["LeaseLost", "RoundError", "RoundResult", "RunControl", "StageOutcome", "run_round"]

logger = logging.getLogger(__name__)


@dataclass
class StagePlan:
    """Where a stage's progress starts and how much of the bar it spans."""

    start: float
    span: float


def _plan(stages: list[str]) -> dict[str, StagePlan]:
    return {part: StagePlan(start, span) for part, (start, span) in training.progress_plan(stages).items()}


@dataclass
class StageOutcome:
    """What a stage did: ran (with its metrics) or skipped (with the reason)."""

    stage: str
    ran: bool
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def skipped(cls, stage: str, reason: str) -> StageOutcome:
        return cls(stage, False, reason)


@dataclass
class RoundResult:
    status: str  # succeeded | failed | cancelled | requeued | lost
    policy_id: int | None = None
    summary: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Job:
    """The run's inputs as read at the start: config, stages, deploy mode, base policy, data."""

    cfg: StageConfigs
    stages: list[str]
    deploy: bool
    deploy_force: bool
    base: Policy
    base_dir: Path
    data: RoundData
    sampling: dict[str, Any]
    created_by_id: int | None


class _Round:
    """The state of one round while it runs (models live only here, never in the DB)."""

    def __init__(self, database: Database, settings: Settings, control: RunControl) -> None:
        self.database = database
        self.settings = settings
        self.control = control
        self.lease = control.lease
        self.run_id = control.lease.run_id
        self.metrics: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        self.gates: dict[str, Any] = {}
        self.rm_usable = False
        self.plan: dict[str, StagePlan] = {}
        self.stage = "snapshot"
        #: Only the main process of a distributed round writes (files, rows); one process always does.
        self.writer = control.writer

    # -- helpers ----------------------------------------------------------------------

    def enter(self, stage: str) -> None:
        self.stage = stage
        self.control.set_stage(stage, self.plan[stage].start if stage in self.plan else self.control.progress)

    def on_step_for(self, stage: str, total_steps: int):  # type: ignore[no-untyped-def]
        plan = self.plan[stage]

        def on_step(reported_stage: str, step: int, values: dict[str, float]) -> None:
            faults.pause_at(stage)  # tests only (RLHF_FAULT_PAUSE_AT); no-op otherwise
            self.control.metric(reported_stage, step, values)
            self.control.set_progress(plan.start + plan.span * min(1.0, step / max(1, total_steps)))

        return on_step

    def record(self, outcome: StageOutcome) -> StageOutcome:
        if outcome.ran:
            self.metrics[outcome.stage] = outcome.metrics
        else:
            self.skipped[outcome.stage] = outcome.reason
            self.control.log(f"{outcome.stage} skipped: {outcome.reason}", "warning")
        return outcome

    # -- the round --------------------------------------------------------------------

    def run(self) -> RoundResult:
        try:
            job = self._load_job() if _world_size() == 1 else self._load_job_distributed()
            model = self._load_start_policy(job)
            epoch_states = _EpochCheckpoints(self.settings.resolved_artifacts_dir, self.run_id, _rank_tag())
            try:
                return self._phases(job, model, epoch_states)
            finally:
                epoch_states.close()
        finally:
            if self.control.tracker is not None:
                self.control.tracker.finish()
                self.control.tracker = None

    def _phases(self, job: _Job, model: Any, epoch_states: _EpochCheckpoints) -> RoundResult:
        """The round, phase by phase (see the module docstring)."""
        policy_changed = False
        if "sft" in job.stages:
            self.enter("sft")
            policy_changed |= self.record(self._sft(model, job, epoch_states)).ran
        if "rm" in job.stages:
            self.enter("rm")
            rm, rm_id = self._reward_model(model, job)
        else:
            rm, rm_id = self._latest_reward_model()
        rm_usable = self.rm_usable = rm is not None and self._rm_gate(job)
        if len(epoch_states):
            model = self._select_sft_epoch(model, rm if rm_usable else None, epoch_states, job)
        if "ppo" in job.stages:
            self.enter("ppo")
            policy_changed |= self.record(self._ppo(model, rm if rm_usable else None, job)).ran
        if "dpo" in job.stages:
            self.enter("dpo")
            policy_changed |= self.record(self._dpo(model, job)).ran
        if not policy_changed:
            return self._finish_without_policy(job, rm_id)
        self.enter("evaluate")
        evaluation = self._evaluate(model, rm, job)
        self.control.check()
        self.enter("promote")
        return self._promote(model, job, evaluation, rm_id)

    # -- inputs -----------------------------------------------------------------------

    def _load_job_distributed(self) -> _Job:
        """The main process reads the run (taking the snapshot on a first attempt), then the
        other ranks read the same row: every rank trains on the same snapshot and config."""
        import torch.distributed as dist

        job, error = None, ""
        if self.writer:
            try:
                job = self._load_job()
            except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the others
                error, raised = f"{type(exc).__name__}: {exc}", exc
        told = [error]
        dist.broadcast_object_list(told, src=0)
        if error:
            if self.writer:
                raise raised
            raise RoundError(f"the main process could not start the round: {told[0]}")
        return job if job is not None else self._load_job()

    def _load_job(self) -> _Job:
        with self.database.session() as db:
            run = db.get(TrainingRun, self.run_id)
            assert run is not None
            cfg = stage_configs(run.config or {})
            stages = list(run.stages or [])
            base = self._base_policy(db, run)
            snapshot = run.snapshot if (run.snapshot or {}).get("ids") else None
            reused = snapshot is not None
            if snapshot is None:
                snapshot = take_snapshot(db, list(run.prompt_set_ids), run.started_at or run.created_at,
                                         include_judgments=cfg.rm.include_evaluations)
                workers.update_run(db, self.lease, snapshot=snapshot)
            sampling = round_sampling(db, list(run.prompt_set_ids))
            given_config = dict(run.config or {})
            already: set[int] = set()
            if "sft" in stages and cfg.sft.demonstrations == "new":
                already = demonstrations_trained_by(db, db.get(Policy, base.id))
            data = load_round_data(
                db, snapshot, exclude_demonstrations=already,
                rm_holdout_fraction=cfg.rm.holdout_fraction, rm_unacceptable=cfg.rm.unacceptable,
            )
            db.expunge(base)
            job = _Job(
                cfg=cfg, stages=stages, deploy=bool(run.deploy), deploy_force=bool(run.deploy_force), base=base,
                base_dir=artifacts.resolve(self.settings.resolved_artifacts_dir, base.artifact_path),
                data=data, sampling=sampling, created_by_id=run.created_by_id,
            )
        # Rollouts and evaluation sample as the labelers' sampler does, unless configured.
        job.cfg.ppo = with_sampling(job.cfg.ppo, sampling)
        job.cfg.eval = with_sampling(job.cfg.eval, sampling)
        self.plan = _plan(stages)
        self._start_tracking(job, given_config, snapshot)
        self.enter("snapshot")
        counts = snapshot["counts"]
        self.control.log(
            f"{'reusing the snapshot of an earlier attempt' if reused else 'snapshot'}: "
            f"{counts['rankings']} rankings, {counts['demonstrations']} demonstrations, "
            + (f"{counts['judgments']} evaluation judgments (rm_include_evaluations), " if "judgments" in counts else "")
            + f"{counts['prompts_train']} train / {counts['prompts_validation']} validation prompts "
            f"(sha256 {snapshot['sha256'][:12]}); sampling as the set: temperature "
            f"{job.cfg.ppo.temperature:g}, {job.cfg.ppo.max_new_tokens} new tokens"
        )
        self.control.check()
        return job

    def _start_tracking(self, job: _Job, given: dict[str, Any], snapshot: dict[str, Any]) -> None:
        """Start the round's experiment trackers (config ``report_to``, else RLHF_REPORT_TO)."""
        names = job.cfg.tracking.report_to
        if names is None:
            try:
                names = self.settings.trackers
            except ValueError as exc:
                self.control.log(f"tracking: {exc}", "warning")
                names = []
        if not names or not self.writer:
            return
        from trainer.config import round_defaults
        from trainer.tracking import RoundTracker, tracking_dir

        directory = tracking_dir(self.settings.resolved_artifacts_dir, self.run_id)
        tracker = RoundTracker(names, directory, self.run_id, warn=lambda m: self.control.log(m, "warning"))
        tracker.config({
            **round_defaults(), **given, "report_to": names, "run_id": self.run_id, "attempt": self.lease.attempt,
            "stages": ",".join(job.stages), "base_policy_version": job.base.version,
            "snapshot_sha256": snapshot.get("sha256", ""), "deploy": "force" if job.deploy_force else job.deploy,
        })
        if tracker.names:
            self.control.log(f"tracking: reporting to {', '.join(tracker.names)} under {directory}")
            self.control.tracker = tracker

    def _load_start_policy(self, job: _Job) -> Any:
        import torch

        from trainer.device import pick_device
        from trainer.policy_io import load_policy
        from trainer.stages.accel import make_accelerator

        self.device = pick_device()
        self.accelerator = make_accelerator(self.device.type)
        if self.accelerator.num_processes > 1:
            self.device = self.accelerator.device  # this rank's device (cuda:<local rank> on GPUs)
            self.control.log(
                f"distributed round: {self.accelerator.num_processes} processes "
                f"({self.accelerator.distributed_type}); this is the main process"
            )
        self.control.log(
            f"training on {_describe_device(self.device)} from policy v{job.base.version} ({job.base_dir.name})"
        )
        model, tokenizer = load_policy(job.base_dir, device=self.device, dtype=torch.float32)
        self.tokenizer = tokenizer
        return model

    def _base_policy(self, db: Any, run: TrainingRun) -> Policy:
        if run.base_policy_id is not None:
            base = db.get(Policy, run.base_policy_id)
            if base is None:
                raise RoundError(f"the round's base policy {run.base_policy_id} no longer exists")
            return base
        base = policies.deployed_policy(db)
        if base is None:
            raise RoundError("no deployed policy to train from; run `rlhf policy bootstrap` first")
        if base.status != "ready":
            raise RoundError(f"the deployed policy v{base.version} is {base.status}: {base.error or ''}".rstrip(": "))
        workers.update_run(db, self.lease, base_policy_id=base.id)
        return base

    # -- SFT --------------------------------------------------------------------------

    def _sft(self, model: Any, job: _Job, epoch_states: _EpochCheckpoints) -> StageOutcome:
        from trainer.config import epochs_for
        from trainer.stages import train_sft

        data, cfg = job.data, job.cfg.sft
        have = len(data.sft_train)
        if have < cfg.min_demonstrations:
            if have == 0 and data.demonstrations_already_trained:
                reason = (
                    f"no new demonstrations: v{job.base.version} was already fine-tuned on all "
                    f"{data.demonstrations_already_trained} in the snapshot (sft_demonstrations=new)"
                )
            elif have == 0:
                reason = "no demonstrations in the snapshot"
            else:
                reason = f"{have} new demonstration(s), fewer than sft_min_demonstrations={cfg.min_demonstrations}"
            return StageOutcome.skipped("sft", reason)
        epochs = epochs_for(have, cfg.batch_size, cfg.grad_accum, cfg.epochs, cfg.min_steps, cfg.max_epochs)
        total = math.ceil(have / cfg.batch_size) * epochs
        self.control.log(
            f"sft: {have} demonstrations ({len(data.sft_val)} validation), {epochs} epochs, {total} steps"
            + (
                f"; {data.demonstrations_already_trained} already trained on by this lineage left out"
                if data.demonstrations_already_trained else ""
            )
        )
        keep = cfg.select_by_reward and epochs > 1 and "rm" in job.stages
        metrics = train_sft(
            model, self.tokenizer, data.sft_train, data.sft_val, cfg,
            accelerator=self.accelerator, on_step=self.on_step_for("sft", total),
            should_stop=self.control.should_stop, epoch_states=epoch_states if keep else None,
        )
        self.control.log("sft done: " + _fmt(metrics, ("train_loss", "val_loss_before", "val_loss_after", "steps")))
        self.accelerator.free_memory()  # drop Accelerate's references to the optimizer state
        return StageOutcome("sft", True, metrics=metrics)

    def _select_sft_epoch(self, model: Any, rm: Any, epoch_states: _EpochCheckpoints, job: _Job) -> Any:
        """Keep the SFT epoch whose validation samples the RM scores best (InstructGPT)."""
        from trainer.stages import reward_fn_from_model
        from trainer.prompting import prompt_text
        from trainer.stages.sampling import sample_responses

        if rm is None or len(epoch_states) < 2:
            return model
        prompts = job.data.eval_prompts[: job.cfg.eval.prompts]
        if not prompts:
            return model
        score_fn = reward_fn_from_model(rm, self.tokenizer, max_length=job.cfg.rm.max_length)
        rendered = [prompt_text(self.tokenizer, p) for p in prompts]
        scores = []
        for index in range(len(epoch_states)):
            model.load_state_dict(epoch_states[index])
            total, n = 0.0, 0
            for i in range(0, len(rendered), job.cfg.eval.batch_size):
                samples = sample_responses(
                    model, self.tokenizer, rendered[i : i + job.cfg.eval.batch_size],
                    max_new_tokens=job.cfg.eval.max_new_tokens, temperature=job.cfg.eval.temperature,
                    top_p=job.cfg.eval.top_p, generator_seed=job.cfg.eval.seed + i,
                )
                total += float(score_fn(samples.prompt_texts, samples.response_texts).sum())
                n += len(samples.response_texts)
            scores.append(total / max(1, n))
            self.control.metric("sft", index + 1, {"val_rm_score": scores[-1]})
            self.control.check()
        best = max(range(len(scores)), key=lambda i: scores[i])
        model.load_state_dict(epoch_states[best])
        sft = self.metrics.setdefault("sft", {})
        sft.update(selected_epoch=best + 1, val_rm_score_by_epoch=scores, selected_by="reward")
        self.control.log(
            f"sft: kept epoch {best + 1} of {len(scores)} by the RM's validation score "
            f"({', '.join(f'{s:+.3f}' for s in scores)}); validation loss is in the sft metrics"
        )
        return model

    # -- reward model -----------------------------------------------------------------

    def _reward_model(self, model: Any, job: _Job) -> tuple[Any, int | None]:
        from trainer.stages import normalize_reward_bias, train_reward_model

        data, cfg = job.data, job.cfg.rm
        usable = len(data.rm_train)
        if usable < cfg.min_rankings:
            if not data.rankings:
                total = len(data.rankings) + data.rankings_without_pairs
                reason = "no rankings in the snapshot" if total == 0 else (
                    f"none of the {total} rankings implies a preference pair (all ties or flagged)"
                )
            else:
                reason = f"{usable} usable training ranking(s), fewer than rm_min_rankings={cfg.min_rankings}"
            self.record(StageOutcome.skipped("rm", reason))
            return None, None
        rm, init = self._initial_reward_model(model, job)
        steps_per_epoch = math.ceil(usable / cfg.rankings_per_batch)
        self.control.log(
            f"rm: {usable} training rankings, {len(data.rm_val)} held out ({data.rm_val_source}), "
            f"at most {cfg.epochs} epochs of {steps_per_epoch} steps (patience {cfg.patience}); start: {init}"
            + (f"; {data.rankings_without_pairs} without a pair left out" if data.rankings_without_pairs else "")
            + (f"; {data.evaluation_pairs} of the training rankings are evaluation judgments" if data.evaluation_pairs
               else "")
        )
        metrics = train_reward_model(
            rm, self.tokenizer, data.rm_train, data.rm_val, cfg, keep_start_if_better=init.startswith("reward_models/"),
            accelerator=self.accelerator, on_step=self.on_step_for("rm", steps_per_epoch * cfg.epochs),
            should_stop=self.control.should_stop,
        )
        rm = self.accelerator.unwrap_model(rm)
        self.accelerator.free_memory()
        self.control.check()
        demos = data.demonstrations
        if demos:
            chosen = _pick(demos, cfg.normalize_examples, job.cfg.seed)
            examples = [((d.prompt, d.messages), d.completion) for d in chosen]
            source = f"{len(examples)} demonstrations"
        else:
            examples = self._policy_samples(model, data.train_prompts or data.eval_prompts, job)
            source = f"{len(examples)} policy samples"
        offset = normalize_reward_bias(rm, self.tokenizer, examples, max_length=cfg.max_length)
        metrics = {**metrics, "bias_offset": offset, "init": init, "base": job.base.base}
        self.control.metric("rm", int(metrics.get("steps", 0)), {"bias_offset": offset})
        self.metrics["rm"] = metrics
        self.control.log(
            f"rm done: {_fmt(metrics, ('val_accuracy', 'val_accuracy_before', 'train_accuracy', 'train_loss'))}, "
            f"best epoch {int(metrics['best_epoch'])} of {int(metrics['epochs_run'])}; "
            f"bias set so {source} score mean 0 (offset {offset:+.4f})"
        )
        return rm, self._save_reward_model(rm, metrics)

    def _initial_reward_model(self, model: Any, job: _Job) -> tuple[Any, str]:
        """A fresh head on the SFT model, or the previous round's RM when ``rm_init`` says so
        (``auto``: when it beats the fresh one on this round's held-out rankings)."""
        from trainer.stages import RewardModel
        from trainer.stages.reward import evaluate_rankings

        fresh = RewardModel.from_causal_lm(model, copy=True).to(self.device)
        cfg = job.cfg.rm
        if cfg.init == "scratch":
            return fresh, "scratch (rm_init=scratch)"
        previous, version = self._previous_reward_model(job)
        if previous is None:
            return fresh, "scratch (no earlier reward model of this base)"
        if cfg.init == "previous" or not job.data.rm_val:
            del fresh
            return previous, f"reward_models/v{version} (rm_init={cfg.init})"
        acc_prev = evaluate_rankings(previous, self.tokenizer, job.data.rm_val, cfg, self.accelerator)["accuracy"]
        acc_fresh = evaluate_rankings(fresh, self.tokenizer, job.data.rm_val, cfg, self.accelerator)["accuracy"]
        self.control.metric("rm", 0, {"init_accuracy_previous": acc_prev, "init_accuracy_fresh": acc_fresh})
        if acc_prev > acc_fresh:
            del fresh
            return previous, f"reward_models/v{version}: held-out {acc_prev:.2f} against {acc_fresh:.2f} for a fresh head"
        del previous
        return fresh, f"scratch: the previous RM reward_models/v{version} scored {acc_prev:.2f} held out, a fresh head {acc_fresh:.2f}"

    def _previous_reward_model(self, job: _Job) -> tuple[Any, int | None]:
        from trainer.stages import RewardModel

        with self.database.session() as db:
            rows = [r for r in policies.list_reward_models(db) if (r.metrics or {}).get("base") == job.base.base]
            if not rows:
                return None, None
            rel, version = rows[0].artifact_path, rows[0].version
        try:
            rm = RewardModel.load(artifacts.resolve(self.settings.resolved_artifacts_dir, rel), device=self.device)
        except Exception as exc:  # noqa: BLE001 - a stale RM is not worth failing the round
            self.control.log(f"could not load reward_models/v{version}: {exc}; training from scratch", "warning")
            return None, None
        return rm, version

    def _latest_reward_model(self) -> tuple[Any, int | None]:
        """The latest registered RM, for rounds that do not train one (None if unusable)."""
        from trainer.stages import RewardModel

        with self.database.session() as db:
            row = policies.latest_reward_model(db)
            if row is None:
                return None, None
            rel, version, rm_id, metrics = row.artifact_path, row.version, row.id, dict(row.metrics or {})
        try:
            rm = RewardModel.load(artifacts.resolve(self.settings.resolved_artifacts_dir, rel), device=self.device)
        except Exception as exc:  # noqa: BLE001
            self.control.log(f"could not load reward_models/v{version}: {exc}", "warning")
            return None, None
        self.metrics["rm"] = {k: metrics[k] for k in ("val_accuracy", "val_pairs", "val_rankings") if k in metrics}
        self.metrics["rm"]["reused_version"] = version
        self.control.log(f"using the latest reward model, reward_models/v{version}")
        return rm, rm_id

    def _rm_gate(self, job: _Job) -> bool:
        """The RM gate: is the reward model above chance on held-out rankings?"""
        rm_metrics = self.metrics.get("rm", {})
        pairs = int(rm_metrics.get("val_pairs") or 0)
        held = int(rm_metrics.get("val_rankings") or 0)
        gate = gates.rm_gate(
            rm_metrics.get("val_accuracy"), pairs, job.cfg.rm,
            held_out_rankings=held or len(job.data.rm_val), total_rankings=len(job.data.rankings),
        )
        self.gates["rm"] = gate.as_dict()
        self.control.log(
            f"rm gate {'passed' if gate.passed else 'failed'}: " + (gate.reason or (
                f"held-out accuracy {gate.value:.2f} on {gate.n} pairs, interval {gate.low:.2f}-{gate.high:.2f}"
            )),
            "info" if gate.passed else "warning",
        )
        return gate.passed

    def _policy_samples(self, model: Any, prompts: list[Any], job: _Job) -> list[Any]:
        from trainer.prompting import prompt_text
        from trainer.stages.sampling import sample_responses

        chosen = _pick(prompts, job.cfg.rm.normalize_examples, job.cfg.seed)
        out = []
        for i in range(0, len(chosen), 16):
            chunk = chosen[i : i + 16]
            samples = sample_responses(
                model, self.tokenizer, [prompt_text(self.tokenizer, p) for p in chunk],
                max_new_tokens=job.cfg.ppo.max_new_tokens, temperature=job.cfg.ppo.temperature,
                generator_seed=job.cfg.seed + i,
            )
            out.extend(zip(chunk, samples.response_texts))
        return out

    def _save_reward_model(self, rm: Any, metrics: dict[str, Any]) -> int | None:
        if not self.writer:
            return None
        root = self.settings.resolved_artifacts_dir
        staging = artifacts.staging_dir(root, artifacts.REWARD_MODELS, f"run{self.run_id}")
        rm.save(staging, tokenizer=self.tokenizer, extra={"training_run_id": self.run_id})
        try:
            with self.database.session() as db:
                registered = policies.max_reward_model_version(db)
            version = artifacts.publish(root, artifacts.REWARD_MODELS, staging, registered, first=1)
            faults.pause_at("rm-saved")
            with self.database.session() as db:
                if workers.locked_run(db, self.lease) is None:
                    raise LeaseLost()
                row = policies.register_reward_model(
                    db, version=version, artifact_path=artifacts.reward_model_rel_path(version),
                    training_run_id=self.run_id, metrics=_jsonable(metrics),
                )
                rm_id = row.id
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.control.log(f"reward model saved as reward_models/v{version}")
        return rm_id

    # -- policy optimisation ----------------------------------------------------------

    def _ppo(self, model: Any, rm: Any, job: _Job) -> StageOutcome:
        from trainer.stages import reward_fn_from_model, train_ppo

        data, cfg = job.data, job.cfg.ppo
        if rm is None:
            why = self.gates.get("rm", {}).get("reason") or self.skipped.get("rm")
            return StageOutcome.skipped("ppo", f"no usable reward model ({why})" if why else "no reward model")
        if not data.train_prompts:
            return StageOutcome.skipped("ppo", "no train prompts in the snapshot")
        if cfg.ptx_coef > 0 and not data.sft_train:
            self.control.log("ppo_ptx_coef > 0 but there are no demonstrations; PPO-ptx off", "warning")
            cfg = replace(cfg, ptx_coef=0.0)
        prompts = _pick(data.train_prompts, cfg.max_prompts, job.cfg.seed)
        iterations = derive_ppo_iterations(cfg, len(prompts), self.accelerator.num_processes)
        ref, ref_name = self._kl_reference(model, job)
        self.control.log(
            f"ppo: {iterations} iterations of {cfg.rollout_batch_size} rollouts over {len(prompts)} prompts, "
            f"{cfg.max_new_tokens} new tokens at temperature {cfg.temperature:g}; KL reference {ref_name}"
        )
        value = copy.deepcopy(rm)
        reward_fn = reward_fn_from_model(rm, self.tokenizer, max_length=job.cfg.rm.max_length)
        metrics = train_ppo(
            model, ref, value, reward_fn, self.tokenizer, prompts, replace(cfg, iterations=iterations),
            ptx_examples=data.sft_train if cfg.ptx_coef > 0 else None, accelerator=self.accelerator,
            on_step=self.on_step_for("ppo", iterations), should_stop=self.control.should_stop,
        )
        del ref, value
        metrics["kl_reference"] = ref_name
        self.control.log("ppo done: " + _fmt(metrics, ("score_first", "score", "kl", "entropy", "iterations")))
        self.accelerator.free_memory()
        return StageOutcome("ppo", True, metrics=metrics)

    def _kl_reference(self, model: Any, job: _Job) -> tuple[Any, str]:
        """The frozen policy PPO's KL penalty pulls towards (``ppo_kl_reference``)."""
        import torch

        from trainer.policy_io import load_policy

        choice = job.cfg.ppo.kl_reference
        if choice == "start":
            return copy.deepcopy(model), "this round's starting (SFT) policy"
        with self.database.session() as db:
            lineage = _lineage(db, job.base)
            pick = lineage[-1]  # the root: v0 of this lineage
            if choice == "first_sft":
                trained = [p for p in reversed(lineage) if "sft" in ((p.metrics or {}).get("stages") or [])]
                if trained:
                    pick = trained[0]
                elif "sft" in self.metrics:  # this round's SFT is the lineage's first
                    return copy.deepcopy(model), "this round's SFT policy (the lineage's first)"
            rel, version = pick.artifact_path, pick.version
        ref, _ = load_policy(artifacts.resolve(self.settings.resolved_artifacts_dir, rel), device=self.device,
                             dtype=torch.float32)
        return ref, f"v{version} (ppo_kl_reference={choice})"

    def _dpo(self, model: Any, job: _Job) -> StageOutcome:
        from trainer.stages.dpo import train_dpo

        data, cfg = job.data, job.cfg.dpo
        if len(data.rm_train) < job.cfg.rm.min_rankings:
            return StageOutcome.skipped(
                "dpo", f"{len(data.rm_train)} usable training ranking(s), fewer than rm_min_rankings="
                f"{job.cfg.rm.min_rankings}"
            )
        ref = copy.deepcopy(model)
        self.control.log(f"dpo: {len(data.rm_train)} rankings, {len(data.rm_val)} held out, beta {cfg.beta:g}")
        steps = math.ceil(len(data.rm_train) / cfg.rankings_per_batch) * cfg.max_epochs
        metrics = train_dpo(
            model, ref, self.tokenizer, data.rm_train, data.rm_val, cfg, accelerator=self.accelerator,
            on_step=self.on_step_for("dpo", steps), should_stop=self.control.should_stop,
        )
        del ref
        self.control.log("dpo done: " + _fmt(metrics, ("train_loss", "val_accuracy", "val_margin", "steps")))
        self.accelerator.free_memory()
        return StageOutcome("dpo", True, metrics=metrics)

    # -- evaluation and promotion -----------------------------------------------------

    def _evaluate(self, model: Any, rm: Any, job: _Job) -> dict[str, Any]:
        import torch

        from trainer.policy_io import load_policy
        from trainer.stages import evaluate_policies, reward_fn_from_model

        prompts = job.data.eval_prompts[: job.cfg.eval.prompts]
        if not prompts:
            self.control.log("evaluation skipped: no prompts", "warning")
            return {}
        if rm is not None:
            score_fn = reward_fn_from_model(rm, self.tokenizer, max_length=job.cfg.rm.max_length)
        else:
            self.control.log("no reward model: evaluation reports KL only", "warning")

            def score_fn(prompts: list[str], responses: list[str]) -> torch.Tensor:
                return torch.zeros(len(responses))

        prev, _ = load_policy(job.base_dir, device=self.device, dtype=torch.float32)
        result = evaluate_policies(model, prev, score_fn, self.tokenizer, prompts, job.cfg.eval)
        del prev
        out: dict[str, Any] = {"kl_from_prev": result["kl_from_prev"], "eval_prompts": result["n"],
                               "eval_samples": result["samples"], "kls": result["kls"]}
        if rm is not None:
            out.update(
                win_rate=result["win_rate"], mean_score_new=result["mean_score_new"],
                mean_score_prev=result["mean_score_prev"], score_deltas=result["score_deltas"], wins=result["wins"],
            )
        self.control.check()
        out["kl_from_v0"] = out["kl_from_prev"]
        if job.base.version != 0:
            v0_dir = self._v0_dir()
            if v0_dir is not None:
                v0, _ = load_policy(v0_dir, device=self.device, dtype=torch.float32)
                vs0 = evaluate_policies(model, v0, score_fn, self.tokenizer, prompts, job.cfg.eval)
                del v0
                out["kl_from_v0"] = vs0["kl_from_prev"]
                if rm is not None:
                    out["win_rate_vs_v0"] = vs0["win_rate"]
            else:
                del out["kl_from_v0"]
        summary = {k: v for k, v in out.items() if not isinstance(v, list)}
        self.metrics["eval"] = summary
        self.control.metric("eval", 0, summary)
        if self.control.tracker is not None:
            from trainer.tracking import evaluation_rows

            self.control.tracker.table("eval/samples", evaluation_rows(out))
        self.control.log("evaluation: " + _fmt(summary, ("win_rate", "mean_score_new", "mean_score_prev",
                                                         "kl_from_prev", "kl_from_v0")))
        return out

    def _v0_dir(self) -> Path | None:
        with self.database.session() as db:
            v0 = policies.get_by_version(db, 0)
            rel = v0.artifact_path if v0 is not None else None
        if rel is None:
            return None
        path = artifacts.resolve(self.settings.resolved_artifacts_dir, rel)
        return path if path.is_dir() else None

    def _summary_metrics(self) -> dict[str, Any]:
        out = _jsonable(self.metrics)
        if self.skipped:
            out["skipped"] = dict(self.skipped)
        if self.gates:
            out["gates"] = _jsonable(self.gates)
        return out

    def _finish_without_policy(self, job: _Job, rm_id: int | None) -> RoundResult:
        ran = [s for s in job.stages if s not in self.skipped]
        why = "; ".join(f"{s}: {r}" for s, r in self.skipped.items())
        if ran:  # e.g. an RM-only round
            summary = f"{', '.join(ran)} done; no policy stage ran, so no new policy" + (f" ({why})" if why else "")
        else:
            summary = f"nothing to train, nothing registered: every stage was skipped ({why})"
        self.control.log(summary, "warning")
        metrics = {**self._summary_metrics(), "summary": summary}
        if rm_id is not None:
            metrics["reward_model_id"] = rm_id
        if not self.writer:
            return RoundResult("succeeded", None, summary, metrics)
        self.control.flush()
        self.control.done = True
        with self.database.session() as db:
            if not workers.finish_run(db, self.lease, "succeeded", progress=1.0, metrics=metrics):
                raise LeaseLost()
        return RoundResult("succeeded", None, summary, metrics)

    def _deploy_decision(self, job: _Job, evaluation: dict[str, Any]) -> tuple[bool, str]:
        """Whether to deploy, and the note for the summary (the deploy gate lives here)."""
        if not self.rm_usable:
            # An RM that failed its gate cannot judge the policy: only the KL budget applies.
            evaluation = {k: v for k, v in evaluation.items() if k not in ("score_deltas", "wins")}
        checks = gates.deploy_gates(evaluation, job.cfg.deploy)
        human = job.cfg.human_eval.enabled  # humans judge it instead of the RM; the KL budget still applies
        refused = gates.refusal([g for g in checks if g.name == "kl_from_parent"] if human else checks)
        self.gates["deploy"] = {
            "checks": [g.as_dict() for g in checks], "passed": not refused, "requested": job.deploy,
            "force": job.deploy_force, **({"judged_by": "humans"} if human else {}),
        }
        if job.deploy_force:
            return True, " (deploy: force" + (f", despite: {refused})" if refused else ")")
        if not job.deploy:
            return False, ("; the deploy gate would refuse it: " + refused) if refused else ""
        if refused:
            return False, f"; not deployed: {refused}"
        return not human, ""  # evaluate_with_humans: the verdict deploys it (app/services/human_gate.py)

    def _promote(self, model: Any, job: _Job, evaluation: dict[str, Any], rm_id: int | None) -> RoundResult:
        from trainer.policy_io import save_policy_atomic

        root = self.settings.resolved_artifacts_dir
        deploy, gate_note = self._deploy_decision(job, evaluation)
        self.control.check()
        if not self.writer:  # the main process saves and registers the (identical) weights
            return RoundResult("succeeded", None, "registered by the main process")
        staging = artifacts.staging_dir(root, artifacts.POLICIES, f"run{self.run_id}")
        save_policy_atomic(model, self.tokenizer, staging)
        try:
            faults.pause_at("promote")
            with self.database.session() as db:
                registered = policies.max_version(db)
            version = artifacts.publish(root, artifacts.POLICIES, staging, registered)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        dest = artifacts.resolve(root, artifacts.policy_rel_path(version))
        trained = [s for s in job.stages if s not in self.skipped and s in ("sft", "ppo", "dpo")]
        summary = f"policy v{version} from v{job.base.version} ({' + '.join(trained)})"
        eval_summary = {k: v for k, v in evaluation.items() if not isinstance(v, list)}
        policy_metrics = {
            **eval_summary, "stages": trained, "skipped": dict(self.skipped), "reward_model_id": rm_id,
            "gates": _jsonable(self.gates),
            **{k: _jsonable(self.metrics[k]) for k in ("sft", "rm", "ppo", "dpo") if k in self.metrics},
        }
        run_metrics = {**self._summary_metrics(), "policy_version": version, "reward_model_id": rm_id}
        self.control.flush()
        faults.pause_at("register")
        self.control.done = True
        try:
            with self.database.session() as db:
                run = workers.locked_run(db, self.lease)
                if run is None:
                    raise LeaseLost()
                if run.cancel_requested:
                    raise _CancelledLate()
                policy = policies.register_policy(
                    db, version=version, artifact_path=artifacts.policy_rel_path(version), parent_id=job.base.id,
                    metrics=policy_metrics, base=job.base.base, training_run_id=self.run_id,
                )
                note = gate_note
                human_note = ""
                if job.cfg.human_eval.enabled:
                    human, human_note = human_gate.open_for_round(
                        db, run, policy, job.base.id, **_human_deploy(job, self.gates["deploy"]["passed"])
                    )
                    run_metrics.setdefault("gates", {})["human"] = self.gates["human"] = human
                if deploy:
                    actor = db.get(User, job.created_by_id) if job.created_by_id else None
                    try:
                        policies.deploy_policy(db, actor, policy.id, reason=f"training run {self.run_id}")
                        note = "; deployed" + gate_note
                    except Conflict as exc:
                        note = f"; not deployed: {exc.message}"
                elif job.deploy and not job.cfg.human_eval.enabled:
                    note += f" (v{job.base.version} stays deployed; an admin can still deploy v{version} by hand)"
                summary += note + human_note
                run_metrics["summary"] = summary
                run_metrics["deployed"] = bool(deploy and note.startswith("; deployed"))
                workers.finish_run(db, self.lease, "succeeded", progress=1.0, policy_id=policy.id, metrics=run_metrics)
                workers.add_log(db, self.run_id, f"registered {summary}", "info" if not gate_note else "warning")
                policy_id = policy.id
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        logger.info("run %d: registered %s", self.run_id, summary)
        if self.control.tracker is not None:
            self.control.tracker.metrics({"round/policy_version": version, "round/deployed": float(
                run_metrics["deployed"])}, 0)
        return RoundResult("succeeded", policy_id, summary, run_metrics)


class _EpochCheckpoints:
    """SFT's per-epoch weights, kept on disk (not in memory) until the RM has chosen one.

    ``train_sft`` appends a CPU state dict after each epoch; each is written to
    ``<artifacts>/policies/.epochs-run<id>-*/epoch<N>.safetensors`` and read back by index.
    """

    def __init__(self, artifacts_dir: Path, run_id: int, tag: str = "") -> None:
        self.dir = artifacts.staging_dir(artifacts_dir, artifacts.POLICIES, f"epochs-run{run_id}{tag}")
        self.count = 0

    def append(self, state: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        # Tied weights (embeddings = LM head) share storage; safetensors wants each once.
        seen: dict[int, str] = {}
        unique = {}
        for name, tensor in state.items():
            key = tensor.data_ptr()
            if key not in seen:
                seen[key] = name
                unique[name] = tensor.contiguous()
        save_file(unique, str(self.dir / f"epoch{self.count}.safetensors"), metadata={"aliases": json.dumps(
            {name: seen[t.data_ptr()] for name, t in state.items() if seen[t.data_ptr()] != name})})
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, Any]:
        from safetensors import safe_open

        path = self.dir / f"epoch{index}.safetensors"
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
        for name, source in aliases.items():
            state[name] = state[source]
        return state

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class _CancelledLate(Exception):
    """Cancel arrived after training but before registration."""


def run_round(database: Database, settings: Settings, control: RunControl) -> RoundResult:
    """Run the leased round to its end and record the outcome; never raises for a bad run
    (in a distributed round, a non-main rank's error or a collective failure is raised: the
    launched job then exits non-zero and the worker requeues the attempt)."""
    state = _Round(database, settings, control)
    try:
        try:
            return state.run()
        finally:
            control.done = True
            _free_memory()
    except BaseException as exc:
        if _world_size() > 1 and (not control.writer or _peer_failure(exc)):
            raise  # the launch child exits non-zero; the worker requeues the attempt
        return _settle(database, control, state, exc)


def _settle(database: Database, control: RunControl, state: _Round, exc: BaseException) -> RoundResult:
    """Record how a round that raised ended (cancelled, requeued, lost or failed)."""
    from trainer.stages import Cancelled

    try:
        raise exc
    except (Cancelled, _CancelledLate):
        if control.lost:
            return _lost(control)
        if control.stopping.is_set() and not control.cancel_requested:
            with database.session() as db:
                workers.release_run(db, control.lease, "the worker was stopped")
            return RoundResult("requeued", summary="worker stopped; requeued")
        summary = f"cancelled during {state.stage}"
        control.flush()
        with database.session() as db:
            workers.finish_run(db, control.lease, "cancelled", metrics={**state._summary_metrics(), "summary": summary})
            workers.add_log(db, control.lease.run_id, summary, "warning")
        return RoundResult("cancelled", summary=summary)
    except LeaseLost:
        return _lost(control)
    except Exception as exc:  # noqa: BLE001 - a bad run fails; the worker goes on
        if control.lost:
            return _lost(control)
        error = f"{state.stage}: {type(exc).__name__}: {exc}" if not isinstance(exc, RoundError) else str(exc)
        logger.exception("run %d failed", control.lease.run_id)
        try:
            control.flush()
            with database.session() as db:
                workers.add_log(db, control.lease.run_id, traceback.format_exc()[-8000:], "error")
                workers.finish_run(db, control.lease, "failed", error=error[:4000], metrics=state._summary_metrics())
        except Exception:  # noqa: BLE001
            logger.exception("run %d: could not record the failure", control.lease.run_id)
        return RoundResult("failed", summary=error)


def _world_size() -> int:
    """Processes of this round: >1 only inside a launched distributed round."""
    try:
        import torch.distributed as dist

        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    except Exception:  # noqa: BLE001
        return 1


def _rank_tag() -> str:
    if _world_size() == 1:
        return ""
    import torch.distributed as dist

    return f"-rank{dist.get_rank()}"


def _peer_failure(exc: BaseException) -> bool:
    """An error of the collective layer (a rank died or hung), not of the round itself."""
    try:
        import torch.distributed as dist

        if isinstance(exc, getattr(dist, "DistError", ())):
            return True
    except Exception:  # noqa: BLE001
        pass
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(w in text for w in ("gloo", "nccl", "connection reset", "connection closed", "broken pipe",
                                   "timed out", "process group"))


def _lost(control: RunControl) -> RoundResult:
    logger.error("run %d: abandoned (another worker owns it now, or it was reaped)", control.lease.run_id)
    return RoundResult("lost", summary="lease lost")


# ------------------------------------------------------------------------------ utils


def _human_deploy(job: _Job, gate_passed: bool) -> dict[str, Any]:
    """Whether the human verdict deploys the new policy, and why not otherwise."""
    if job.deploy_force:
        return {"deploy_on_verdict": False, "held_back": "deployed already (deploy: force)"}
    if not job.deploy:
        return {"deploy_on_verdict": False, "held_back": "the round did not ask to deploy"}
    if not gate_passed:
        return {"deploy_on_verdict": False, "held_back": "the KL budget refused it"}
    return {"deploy_on_verdict": True}


def _lineage(db: Any, policy: Policy) -> list[Policy]:
    """``policy`` and its ancestors, newest first (the last one is the lineage's root)."""
    out: list[Policy] = []
    seen: set[int] = set()
    current: Policy | None = db.get(Policy, policy.id)
    while current is not None and current.id not in seen:
        seen.add(current.id)
        out.append(current)
        current = db.get(Policy, current.parent_id) if current.parent_id is not None else None
    return out


def _describe_device(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)}, bf16)"
    return f"cpu ({torch.get_num_threads()} threads, fp32)"


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


def _pick(items: list[Any], limit: int, seed: int) -> list[Any]:
    items = list(items)
    if len(items) <= limit:
        return items
    return random.Random(seed).sample(items, limit)


def _fmt(metrics: dict[str, Any], keys: tuple[str, ...]) -> str:
    parts = [f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), int | float)]
    return ", ".join(parts) or "ok"


def _jsonable(value: Any) -> Any:
    """Plain JSON types (floats for tensors/numpy scalars; NaN/inf become None)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return None
    return int(number) if isinstance(value, int) else number

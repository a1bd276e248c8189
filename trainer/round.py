"""One training round, as InstructGPT: SFT -> reward model -> PPO -> evaluate -> register.

:class:`RunControl` is the run's link to the database while it trains: it holds the
lease (every write is conditional on it), buffers metric points into ``run_metrics``
rows, writes log lines and progress, and answers ``should_stop()`` from the flags the
worker's heartbeat thread sets (cancel requested, lease lost, worker shutting down).

:func:`run_round` does the work:

1. **Snapshot.** The ids of the active rankings and demonstrations of the round's sets
   created before the run started are fixed (trainer/data.py); a retry reuses them.
2. **SFT** on the demonstrations, starting from the deployed policy (skipped, with the
   reason, when there are fewer than ``sft_min_demonstrations``). By default
   (``sft_demonstrations: new``) only demonstrations that the deployed policy's lineage
   has not been fine-tuned on yet: retraining every round on the same answers piles up
   epochs and drifts the policy away from v0.
3. **RM** from the SFT model (else the deployed policy) with a scalar head, on K-way
   rankings; held-out accuracy; the bias is set so demonstrations (else policy samples)
   score mean 0; saved to ``reward_models/vN`` and registered. Skipped with the reason
   when there are fewer than ``rm_min_rankings`` usable rankings.
4. **PPO** from the SFT policy (also the KL reference) with the value model initialised
   from the RM. Skipped when the round has no RM (a round that does not ask for the RM
   stage uses the latest registered RM).
5. **Evaluate** the new policy against the previous one (and v0): win rate under the RM,
   mean scores, KL.
6. **Promote**: the policy is written with ``save_policy_atomic`` to ``policies/vN``
   (temp dir + rename), then registered with its parent, metrics and run id in the same
   transaction that marks the run succeeded (and deploys it when the round asked). A
   worker killed at any point leaves at most an unregistered directory, never a
   registered half-written policy. When no stage changed the policy nothing is
   registered and the run's summary says why.
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import os
import random
import shutil
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import Settings
from app.db import Database
from app.models import Policy, TrainingRun, User
from app.services import policies, training, workers
from app.services.errors import Conflict
from app.services.workers import Lease
from trainer import artifacts, faults
from trainer.data import RoundData, demonstrations_trained_by, load_round_data, take_snapshot

logger = logging.getLogger(__name__)

#: Stage names the stage functions report -> names in run_metrics / metric_series.
STAGE_NAMES = {"sft": "sft", "reward": "rm", "rm": "rm", "ppo": "ppo", "eval": "eval"}


class LeaseLost(Exception):
    """The run was reaped (or reassigned) while this worker still worked on it."""


class RoundError(Exception):
    """A round cannot run (no deployed policy, ...); the run fails with this message."""


class RunControl:
    """The running round's side of the database: lease, cancel flag, progress, metrics, logs."""

    def __init__(
        self,
        database: Database,
        lease: Lease,
        *,
        stopping: threading.Event | None = None,
        flush_s: float = 1.0,
    ) -> None:
        self.database = database
        self.lease = lease
        self.stopping = stopping or threading.Event()
        self.flush_s = flush_s
        self.cancel_requested = False
        self.lost = False
        self.done = False  # set just before the final write; heartbeats stop mattering then
        self.stage: str | None = None
        self.progress = 0.0
        self._points: list[tuple[str, int, str, float]] = []
        self._dirty = False
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()

    # -- lease ------------------------------------------------------------------------

    def beat(self) -> None:
        """Refresh the heartbeat (called by the worker's heartbeat thread)."""
        if self.done:
            return
        with self.database.session() as db:
            state = workers.heartbeat_run(db, self.lease)
        if not state.owned and not self.done:
            if not self.lost:
                logger.error("run %d: lease lost (reaped or reassigned); stopping", self.lease.run_id)
            self.lost = True
        if state.cancel_requested and not self.cancel_requested:
            logger.info("run %d: cancel requested", self.lease.run_id)
            self.cancel_requested = True

    def should_stop(self) -> bool:
        return self.cancel_requested or self.lost or self.stopping.is_set()

    def check(self) -> None:
        """Raise ``Cancelled`` between steps when the run must stop."""
        from trainer.stages import Cancelled

        if self.should_stop():
            raise Cancelled("run stopped")

    # -- reporting --------------------------------------------------------------------

    def log(self, message: str, level: str = "info") -> None:
        logger.log(logging.getLevelName(level.upper()), "run %d: %s", self.lease.run_id, message)
        try:
            with self.database.session() as db:
                if workers.lease_state(db, self.lease).owned:
                    workers.add_log(db, self.lease.run_id, message, level)
        except Exception:  # noqa: BLE001 - a log line is never worth failing the run
            logger.exception("run %d: could not write a log line", self.lease.run_id)

    def set_stage(self, stage: str, progress: float) -> None:
        with self._lock:
            self.stage, self.progress, self._dirty = stage, progress, True
        self.flush()

    def set_progress(self, progress: float) -> None:
        with self._lock:
            if progress > self.progress:
                self.progress, self._dirty = min(progress, 1.0), True
        self.maybe_flush()

    def metric(self, stage: str, step: int, values: dict[str, float]) -> None:
        name = STAGE_NAMES.get(stage, stage)
        with self._lock:
            for key, value in values.items():
                if value is None or (isinstance(value, float) and not math.isfinite(value)):
                    continue
                self._points.append((name, int(step), key, float(value)))
        self.maybe_flush()

    def maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Write buffered metric points, progress and stage (one transaction)."""
        with self._lock:
            points, self._points = self._points, []
            dirty, self._dirty = self._dirty, False
            stage, progress = self.stage, self.progress
        self._last_flush = time.monotonic()
        if not points and not dirty:
            return
        try:
            with self.database.session() as db:
                if not workers.update_run(db, self.lease, stage=stage, progress=round(progress, 4)):
                    self.lost = True
                    db.rollback()
                    return
                workers.add_metrics(db, self.lease.run_id, points)
        except Exception:  # noqa: BLE001 - keep the points for the next flush
            logger.exception("run %d: could not write metrics; will retry", self.lease.run_id)
            with self._lock:
                self._points = points + self._points
                self._dirty = True


@dataclass
class StagePlan:
    """Where a stage's progress starts and how much of the bar it spans."""

    start: float
    span: float


def _plan(stages: list[str]) -> dict[str, StagePlan]:
    return {part: StagePlan(start, span) for part, (start, span) in training.progress_plan(stages).items()}


@dataclass
class RoundResult:
    status: str  # succeeded | failed | cancelled | requeued | lost
    policy_id: int | None = None
    summary: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


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
        self.plan: dict[str, StagePlan] = {}
        self.stage = "snapshot"

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

    def skip(self, stage: str, reason: str) -> None:
        self.skipped[stage] = reason
        self.control.log(f"{stage} skipped: {reason}", "warning")

    # -- the round --------------------------------------------------------------------

    def run(self) -> RoundResult:
        import torch

        from trainer.device import pick_device
        from trainer.policy_io import load_policy
        from trainer.stages.common import make_accelerator

        with self.database.session() as db:
            run = db.get(TrainingRun, self.run_id)
            assert run is not None
            config = {**training.config_defaults(), **(run.config or {})}
            stages = list(run.stages or [])
            deploy = bool(run.deploy)
            base = self._base_policy(db, run)
            snapshot = run.snapshot if (run.snapshot or {}).get("ids") else None
            if snapshot is None:
                snapshot = take_snapshot(db, list(run.prompt_set_ids), run.started_at or run.created_at)
                workers.update_run(db, self.lease, snapshot=snapshot)
                reused = False
            else:
                reused = True
            created_by_id = run.created_by_id
        self.plan = _plan(stages)
        self.enter("snapshot")
        counts = snapshot["counts"]
        self.control.log(
            f"{'reusing the snapshot of an earlier attempt' if reused else 'snapshot'}: "
            f"{counts['rankings']} rankings, {counts['demonstrations']} demonstrations, "
            f"{counts['prompts_train']} train / {counts['prompts_validation']} validation prompts "
            f"(sha256 {snapshot['sha256'][:12]})"
        )
        with self.database.session() as db:
            already: set[int] = set()
            if "sft" in stages and config["sft_demonstrations"] == "new":
                already = demonstrations_trained_by(db, db.get(Policy, base.id))
            data = load_round_data(
                db,
                snapshot,
                exclude_demonstrations=already,
                rm_holdout_fraction=float(config["rm_holdout_fraction"]),
                rm_unacceptable=str(config["rm_unacceptable"]),
            )
        self.config = config
        self.data = data
        base_dir = artifacts.resolve(self.settings.resolved_artifacts_dir, base.artifact_path)
        self.control.check()

        device = pick_device()
        self.device = device
        self.accelerator = make_accelerator(device.type)
        self.control.log(f"training on {_describe_device(device)} from policy v{base.version} ({base_dir.name})")
        model, tokenizer = load_policy(base_dir, device=device, dtype=torch.float32)
        self.tokenizer = tokenizer
        policy_changed = False

        # ---- SFT
        if "sft" in stages:
            self.enter("sft")
            if len(data.sft_train) < int(config["sft_min_demonstrations"]):
                have = len(data.sft_train)
                if have == 0 and data.demonstrations_already_trained:
                    reason = (
                        f"no new demonstrations: v{base.version} was already fine-tuned on all "
                        f"{data.demonstrations_already_trained} in the snapshot (sft_demonstrations=new)"
                    )
                elif have == 0:
                    reason = "no demonstrations in the snapshot"
                else:
                    reason = f"{have} demonstration(s), fewer than sft_min_demonstrations={config['sft_min_demonstrations']}"
                self.skip("sft", reason)
            else:
                model = self._sft(model, data, config)
                policy_changed = True

        # ---- RM
        rm = None
        rm_id = None
        if "rm" in stages:
            self.enter("rm")
            usable = len(data.rm_train)
            if usable < int(config["rm_min_rankings"]):
                if not data.rankings:
                    total = counts["rankings"]
                    reason = "no rankings in the snapshot" if total == 0 else (
                        f"none of the {total} rankings implies a preference pair (all ties or flagged)"
                    )
                else:
                    reason = f"{usable} usable training ranking(s), fewer than rm_min_rankings={config['rm_min_rankings']}"
                self.skip("rm", reason)
            else:
                rm, rm_id = self._reward_model(model, data, config)
        else:
            rm, rm_id = self._latest_reward_model(device)

        # ---- PPO
        if "ppo" in stages:
            self.enter("ppo")
            if rm is None:
                why = self.skipped.get("rm")
                self.skip("ppo", f"no reward model (the RM stage was skipped: {why})" if why else "no reward model")
            elif not data.train_prompts:
                self.skip("ppo", "no train prompts in the snapshot")
            else:
                model = self._ppo(model, rm, data, config)
                policy_changed = True

        # ---- evaluate and promote
        if not policy_changed:
            ran = [s for s in stages if s not in self.skipped]
            why = "; ".join(f"{s}: {r}" for s, r in self.skipped.items())
            if ran:  # e.g. an RM-only round
                summary = f"{', '.join(ran)} done; no policy stage ran, so no new policy" + (f" ({why})" if why else "")
            else:
                summary = f"nothing to train, nothing registered: every stage was skipped ({why})"
            self.control.log(summary, "warning")
            return self._finish_without_policy(summary, rm_id)

        self.enter("evaluate")
        eval_metrics = self._evaluate(model, rm, base, base_dir, data, config)
        self.control.check()
        self.enter("promote")
        return self._promote(model, base, eval_metrics, rm_id, deploy, created_by_id, stages)

    # -- stages -----------------------------------------------------------------------

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

    def _sft(self, model: Any, data: RoundData, config: dict[str, Any]) -> Any:
        from trainer.stages import SFTConfig, train_sft

        cfg = SFTConfig(
            lr=float(config["sft_lr"]),
            epochs=int(config["sft_epochs"]),
            batch_size=int(config["sft_batch_size"]),
            max_length=int(config["sft_max_length"]),
            seed=int(config["seed"]),
        )
        total = math.ceil(len(data.sft_train) / cfg.batch_size) * cfg.epochs
        self.control.log(
            f"sft: {len(data.sft_train)} demonstrations ({len(data.sft_val)} validation), {total} steps"
            + (
                f"; {data.demonstrations_already_trained} already trained on by this lineage left out"
                if data.demonstrations_already_trained else ""
            )
        )
        metrics = train_sft(
            model,
            self.tokenizer,
            data.sft_train,
            data.sft_val,
            cfg,
            accelerator=self.accelerator,
            on_step=self.on_step_for("sft", total),
            should_stop=self.control.should_stop,
        )
        self.metrics["sft"] = metrics
        self.control.log("sft done: " + _fmt(metrics, ("train_loss", "val_loss_before", "val_loss_after", "steps")))
        model = self.accelerator.unwrap_model(model)
        self.accelerator.free_memory()  # drop Accelerate's references to the optimizer state
        return model

    def _reward_model(self, model: Any, data: RoundData, config: dict[str, Any]) -> tuple[Any, int]:
        from trainer.stages import RewardModel, RMConfig, normalize_reward_bias, train_reward_model

        cfg = RMConfig(
            lr=float(config["rm_lr"]),
            epochs=int(config["rm_epochs"]),
            rankings_per_batch=int(config["rm_rankings_per_batch"]),
            max_length=int(config["rm_max_length"]),
            unacceptable=str(config["rm_unacceptable"]),
            seed=int(config["seed"]),
        )
        total = math.ceil(len(data.rm_train) / cfg.rankings_per_batch) * cfg.epochs
        self.control.log(
            f"rm: {len(data.rm_train)} training rankings, {len(data.rm_val)} held out ({data.rm_val_source}), "
            f"{total} steps" + (f"; {data.rankings_without_pairs} without a pair left out" if data.rankings_without_pairs else "")
        )
        rm = RewardModel.from_causal_lm(model, copy=True).to(self.device)
        metrics = train_reward_model(
            rm,
            self.tokenizer,
            data.rm_train,
            data.rm_val,
            cfg,
            accelerator=self.accelerator,
            on_step=self.on_step_for("rm", total),
            should_stop=self.control.should_stop,
        )
        rm = self.accelerator.unwrap_model(rm)
        self.accelerator.free_memory()
        self.control.check()
        limit = int(config["rm_normalize_examples"])
        demos = data.demonstrations
        if demos:
            chosen = _pick(demos, limit, int(config["seed"]))
            examples = [((d.prompt, d.messages), d.completion) for d in chosen]
            source = f"{len(examples)} demonstrations"
        else:
            examples = self._policy_samples(model, data.train_prompts or data.eval_prompts, limit, config)
            source = f"{len(examples)} policy samples"
        offset = normalize_reward_bias(rm, self.tokenizer, examples, max_length=cfg.max_length)
        metrics = {**metrics, "bias_offset": offset}
        self.control.metric("rm", int(metrics.get("steps", total)), {"bias_offset": offset})
        self.metrics["rm"] = metrics
        self.control.log(
            f"rm done: {_fmt(metrics, ('val_accuracy', 'val_accuracy_before', 'train_accuracy', 'train_loss'))}; "
            f"bias set so {source} score mean 0 (offset {offset:+.4f})"
        )
        rm_id = self._save_reward_model(rm, metrics)
        return rm, rm_id

    def _policy_samples(self, model: Any, prompts: list[Any], limit: int, config: dict[str, Any]) -> list[Any]:
        from trainer.stages.common import prompt_text, sample_responses

        chosen = _pick(prompts, limit, int(config["seed"]))
        out = []
        for i in range(0, len(chosen), 16):
            chunk = chosen[i : i + 16]
            samples = sample_responses(
                model,
                self.tokenizer,
                [prompt_text(self.tokenizer, p) for p in chunk],
                max_new_tokens=int(config["ppo_max_new_tokens"]),
                temperature=float(config["ppo_temperature"]),
                generator_seed=int(config["seed"]) + i,
            )
            out.extend(zip(chunk, samples.response_texts))
        return out

    def _save_reward_model(self, rm: Any, metrics: dict[str, Any]) -> int:
        root = self.settings.resolved_artifacts_dir
        staging = root / artifacts.REWARD_MODELS / f".staging-run{self.run_id}-{uuid.uuid4().hex[:8]}"
        rm.save(staging, tokenizer=self.tokenizer, extra={"training_run_id": self.run_id})
        try:
            with self.database.session() as db:
                version = artifacts.next_free_version(
                    root, artifacts.REWARD_MODELS, policies.max_reward_model_version(db), first=1
                )
            dest = _rename_into_free_version(staging, root, artifacts.REWARD_MODELS, version)
            version = int(dest.name[1:])
            faults.pause_at("rm-saved")
            with self.database.session() as db:
                if workers.locked_run(db, self.lease) is None:
                    raise LeaseLost()
                row = policies.register_reward_model(
                    db,
                    version=version,
                    artifact_path=artifacts.reward_model_rel_path(version),
                    training_run_id=self.run_id,
                    metrics=_jsonable(metrics),
                )
                rm_id = row.id
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.control.log(f"reward model saved as reward_models/v{version}")
        return rm_id

    def _latest_reward_model(self, device: Any) -> tuple[Any, int | None]:
        """The latest registered RM, for rounds that do not train one (None if unusable)."""
        from trainer.stages import RewardModel

        with self.database.session() as db:
            row = policies.latest_reward_model(db)
            if row is None:
                return None, None
            rel, version, rm_id = row.artifact_path, row.version, row.id
        try:
            rm = RewardModel.load(artifacts.resolve(self.settings.resolved_artifacts_dir, rel), device=device)
        except Exception as exc:  # noqa: BLE001
            self.control.log(f"could not load reward_models/v{version}: {exc}", "warning")
            return None, None
        self.control.log(f"using the latest reward model, reward_models/v{version}")
        return rm, rm_id

    def _ppo(self, model: Any, rm: Any, data: RoundData, config: dict[str, Any]) -> Any:
        from trainer.stages import PPOConfig, reward_fn_from_model, train_ppo

        ptx = float(config["ppo_ptx_coef"])
        if ptx > 0 and not data.sft_train:
            self.control.log("ppo_ptx_coef > 0 but there are no demonstrations; PPO-ptx off", "warning")
            ptx = 0.0
        cfg = PPOConfig(
            lr=float(config["ppo_lr"]),
            kl_coef=float(config["ppo_kl_coef"]),
            ppo_epochs=int(config["ppo_epochs"]),
            rollout_batch_size=int(config["ppo_rollout_batch_size"]),
            minibatch_size=int(config["ppo_minibatch_size"]),
            iterations=int(config["ppo_iterations"]),
            max_new_tokens=int(config["ppo_max_new_tokens"]),
            temperature=float(config["ppo_temperature"]),
            ptx_coef=ptx,
            seed=int(config["seed"]),
        )
        prompts = _pick(data.train_prompts, int(config["ppo_max_prompts"]), int(config["seed"]))
        self.control.log(f"ppo: {cfg.iterations} iterations of {cfg.rollout_batch_size} rollouts over {len(prompts)} prompts")
        ref = copy.deepcopy(model)
        value = copy.deepcopy(rm)
        reward_fn = reward_fn_from_model(rm, self.tokenizer, max_length=int(config["rm_max_length"]))
        metrics = train_ppo(
            model,
            ref,
            value,
            reward_fn,
            self.tokenizer,
            prompts,
            cfg,
            ptx_examples=data.sft_train if ptx > 0 else None,
            accelerator=self.accelerator,
            on_step=self.on_step_for("ppo", cfg.iterations),
            should_stop=self.control.should_stop,
        )
        del ref, value
        self.metrics["ppo"] = metrics
        self.control.log("ppo done: " + _fmt(metrics, ("score_first", "score", "kl", "entropy", "iterations")))
        self.accelerator.free_memory()
        return model

    def _evaluate(
        self, model: Any, rm: Any, base: Policy, base_dir: Path, data: RoundData, config: dict[str, Any]
    ) -> dict[str, float]:
        import torch

        from trainer.policy_io import load_policy
        from trainer.stages import EvalParams, evaluate_policies, reward_fn_from_model

        prompts = data.eval_prompts[: int(config["eval_prompts"])]
        if not prompts:
            self.control.log("evaluation skipped: no prompts", "warning")
            return {}
        if rm is not None:
            score_fn = reward_fn_from_model(rm, self.tokenizer, max_length=int(config["rm_max_length"]))
        else:
            self.control.log("no reward model: evaluation reports KL only", "warning")

            def score_fn(prompts: list[str], responses: list[str]) -> torch.Tensor:
                return torch.zeros(len(responses))

        params = EvalParams(
            max_new_tokens=int(config["eval_max_new_tokens"]),
            temperature=float(config["ppo_temperature"]),
            seed=int(config["seed"]) + 1234,
        )
        prev, _ = load_policy(base_dir, device=self.device, dtype=torch.float32)
        result = evaluate_policies(model, prev, score_fn, self.tokenizer, prompts, params)
        del prev
        out = {"kl_from_prev": result["kl_from_prev"], "eval_prompts": result["n"]}
        if rm is not None:
            out.update(
                win_rate=result["win_rate"],
                mean_score_new=result["mean_score_new"],
                mean_score_prev=result["mean_score_prev"],
            )
        self.control.check()
        out["kl_from_v0"] = out["kl_from_prev"]
        if base.version != 0:
            v0_dir = self._v0_dir()
            if v0_dir is not None:
                v0, _ = load_policy(v0_dir, device=self.device, dtype=torch.float32)
                vs0 = evaluate_policies(model, v0, score_fn, self.tokenizer, prompts, params)
                del v0
                out["kl_from_v0"] = vs0["kl_from_prev"]
                if rm is not None:
                    out["win_rate_vs_v0"] = vs0["win_rate"]
            else:
                del out["kl_from_v0"]
        self.metrics["eval"] = out
        self.control.metric("eval", 0, out)
        self.control.log("evaluation: " + _fmt(out, ("win_rate", "mean_score_new", "mean_score_prev", "kl_from_prev", "kl_from_v0")))
        return out

    def _v0_dir(self) -> Path | None:
        with self.database.session() as db:
            v0 = policies.get_by_version(db, 0)
            rel = v0.artifact_path if v0 is not None else None
        if rel is None:
            return None
        path = artifacts.resolve(self.settings.resolved_artifacts_dir, rel)
        return path if path.is_dir() else None

    # -- endings ----------------------------------------------------------------------

    def _summary_metrics(self) -> dict[str, Any]:
        out = _jsonable(self.metrics)
        if self.skipped:
            out["skipped"] = dict(self.skipped)
        return out

    def _finish_without_policy(self, summary: str, rm_id: int | None) -> RoundResult:
        metrics = {**self._summary_metrics(), "summary": summary}
        if rm_id is not None:
            metrics["reward_model_id"] = rm_id
        self.control.flush()
        self.control.done = True
        with self.database.session() as db:
            if not workers.finish_run(db, self.lease, "succeeded", progress=1.0, metrics=metrics):
                raise LeaseLost()
        return RoundResult("succeeded", None, summary, metrics)

    def _promote(
        self,
        model: Any,
        base: Policy,
        eval_metrics: dict[str, float],
        rm_id: int | None,
        deploy: bool,
        created_by_id: int | None,
        stages: list[str],
    ) -> RoundResult:
        from trainer.policy_io import save_policy_atomic

        root = self.settings.resolved_artifacts_dir
        with self.database.session() as db:
            version = artifacts.next_free_version(root, artifacts.POLICIES, policies.max_version(db))
        self.control.check()
        dest: Path | None = None
        for _ in range(100):
            candidate = artifacts.resolve(root, artifacts.policy_rel_path(version))
            try:
                dest = save_policy_atomic(
                    model, self.tokenizer, candidate, before_rename=lambda: faults.pause_at("promote")
                )
                break
            except FileExistsError:
                version += 1
        if dest is None:
            raise RoundError("could not find a free policy version directory")
        trained = [s for s in stages if s not in self.skipped and s in ("sft", "ppo")]
        summary = f"policy v{version} from v{base.version} ({' + '.join(trained)})"
        policy_metrics = {
            **eval_metrics,
            "stages": trained,
            "skipped": dict(self.skipped),
            "reward_model_id": rm_id,
            **{k: _jsonable(self.metrics[k]) for k in ("sft", "rm", "ppo") if k in self.metrics},
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
                    db,
                    version=version,
                    artifact_path=artifacts.policy_rel_path(version),
                    parent_id=base.id,
                    metrics=policy_metrics,
                    base=base.base,
                    training_run_id=self.run_id,
                )
                deployed_note = ""
                if deploy:
                    actor = db.get(User, created_by_id) if created_by_id else None
                    try:
                        policies.deploy_policy(db, actor, policy.id, reason=f"training run {self.run_id}")
                        deployed_note = "; deployed"
                    except Conflict as exc:
                        deployed_note = f"; not deployed: {exc.message}"
                summary += deployed_note
                run_metrics["summary"] = summary
                workers.finish_run(db, self.lease, "succeeded", progress=1.0, policy_id=policy.id, metrics=run_metrics)
                workers.add_log(db, self.run_id, f"registered {summary}")
                policy_id = policy.id
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        logger.info("run %d: registered %s", self.run_id, summary)
        return RoundResult("succeeded", policy_id, summary, run_metrics)


class _CancelledLate(Exception):
    """Cancel arrived after training but before registration."""


def run_round(database: Database, settings: Settings, control: RunControl) -> RoundResult:
    """Run the leased round to its end and record the outcome; never raises for a bad run."""
    from trainer.stages import Cancelled

    state = _Round(database, settings, control)
    try:
        try:
            return state.run()
        finally:
            control.done = True
            _free_memory()
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


def _lost(control: RunControl) -> RoundResult:
    logger.error("run %d: abandoned (another worker owns it now, or it was reaped)", control.lease.run_id)
    return RoundResult("lost", summary="lease lost")


# ------------------------------------------------------------------------------ utils


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


def _rename_into_free_version(staging: Path, root: Path, kind: str, version: int) -> Path:
    """Rename a complete staging directory to the first free ``<kind>/vN`` from ``version``."""
    for v in range(version, version + 100):
        dest = root / kind / f"v{v}"
        if dest.exists():
            continue
        try:
            os.rename(staging, dest)
            return dest
        except OSError:
            if dest.exists():
                continue
            raise
    raise RoundError(f"could not find a free {kind} version directory")

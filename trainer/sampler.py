"""The sampler: keeps every active prompt set's buffer of labelable prompts filled with K
completions from the deployed policy.

Each :meth:`Sampler.step`:

1. reads the deployed policy; when it changed, loads it (once per process per policy,
   never per batch), and unless ``settings.keep_old_completions`` retires the ready
   completions of other policies that no labeler holds or has ranked (leased tasks keep
   theirs). A policy directory that cannot be loaded marks the policy ``failed`` with the
   error; the sampler then idles until another policy is deployed, and the worker goes on;
2. plans per active set (app.services.policies.sampling_plan): how many labelable prompts
   already have K completions (the buffer) and which prompts to sample next to bring it
   back to ``settings.buffer_prompts``. The emptiest sets go first, so a set with many
   labelers never runs dry; at most ``settings.sampler_batch_size`` prompts per batch;
3. generates K completions per prompt with the set's sampling parameters (distinct texts
   per prompt) and writes them with seed, params, token count, finish reason, policy and
   generation time, unless the deployed policy changed meanwhile (the batch is dropped);
4. logs one line per batch.

Before that, each step writes one batch of the samples that human evaluations wait for
(:meth:`Sampler.evaluation_step`, trainer/eval_sampler.py), from whichever policies they name.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from app.config import Settings
from app.db import Database
from app.models import DEFAULT_SAMPLING, Policy
from app.services import chat_templates, conversations, policies
from trainer import artifacts
from trainer.generator_source import GeneratorSource, close_generator

logger = logging.getLogger(__name__)


@dataclass
class LoadedPolicy:
    id: int
    version: int
    generator: Any
    chat_template: bool = True  # conversation sets are sampled only with one (never flattened)


@dataclass
class BatchReport:
    """What one sampler batch did (also the log line)."""

    policy_version: int
    prompts: int
    completions: int
    dropped: int
    tokens: int
    seconds: float
    sets: dict[str, str]

    def line(self) -> str:
        buffers = ", ".join(f"{name} {state}" for name, state in self.sets.items())
        rate = self.tokens / self.seconds if self.seconds > 0 else 0.0
        extra = f", {self.dropped} dropped" if self.dropped else ""
        return (
            f"sampler: policy v{self.policy_version} wrote {self.completions} completions for "
            f"{self.prompts} prompts in {self.seconds:.1f} s ({rate:.0f} tok/s{extra}); buffers: {buffers}"
        )


class Sampler(GeneratorSource):
    """Samples K completions per prompt from the deployed policy into the database."""

    def __init__(self, database: Database, settings: Settings, **options: Any) -> None:
        """``options``: ``device``, ``prefer_vllm``, ``generator_factory`` (:class:`GeneratorSource`)."""
        super().__init__(database, settings, **options)
        self.loaded: LoadedPolicy | None = None
        self._waiting_on: int | None = None  # policy id we already said we cannot serve
        self._retry_at: dict[int, float] = {}
        self._bad_prompts: set[int] = set()
        self.last_report: BatchReport | None = None
        self._evaluations: Any = None  # trainer.eval_sampler.EvaluationSampler, made on first use

    @property
    def policy_id(self) -> int | None:
        return self.loaded.id if self.loaded else None

    # -- policy switching -------------------------------------------------------------

    def _release(self) -> None:
        if self.loaded is None:
            return
        close_generator(self.loaded.generator, f"sampler (v{self.loaded.version})")
        self.loaded = None
        from trainer.device import free_memory

        free_memory()

    def ensure_policy(self) -> bool:
        """Load the deployed policy if it is not the one loaded; True when one is ready to serve."""
        with self.database.session() as db:
            policy = policies.deployed_policy(db)
            snapshot = (policy.id, policy.version, policy.status, policy.artifact_path) if policy else None
        if snapshot is None:
            if self._waiting_on != -1:
                logger.info("sampler: no policy is deployed; waiting (run `rlhf policy bootstrap`)")
                self._waiting_on = -1
            self._release()
            return False
        policy_id, version, status, rel_path = snapshot
        if self.loaded is not None and self.loaded.id == policy_id:
            return True
        if status != "ready":
            if self._waiting_on != policy_id:
                logger.warning("sampler: deployed policy v%d is %s; waiting for another deploy", version, status)
                self._waiting_on = policy_id
            self._release()
            return False
        if time.monotonic() < self._retry_at.get(policy_id, 0.0):
            return False
        previous = self.loaded.version if self.loaded else None
        self._release()
        started = time.perf_counter()
        try:
            path = artifacts.resolve(self.settings.resolved_artifacts_dir, rel_path)
            generator = self._make_generator(path)
        except Exception as exc:  # noqa: BLE001 - any load failure is reported, never fatal
            self._load_failed(policy_id, version, exc)
            return False
        self.loaded = LoadedPolicy(policy_id, version, generator, chat_templates.has_chat_template(path))
        self._waiting_on = None
        backend = getattr(generator, "backend", type(generator).__name__)
        logger.info(
            "sampler: loaded policy v%d (%s) in %.1f s%s",
            version,
            backend,
            time.perf_counter() - started,
            f", replacing v{previous}" if previous is not None else "",
        )
        if not self.settings.keep_old_completions:
            with self.database.session() as db:
                retired = policies.retire_unlabeled_completions(db, keep_policy_id=policy_id)
            if retired:
                logger.info("sampler: retired %d unlabeled completions of earlier policies", retired)
        return True

    def _load_failed(self, policy_id: int, version: int, exc: Exception) -> None:
        from trainer.policy_io import PolicyLoadError

        if isinstance(exc, PolicyLoadError | FileNotFoundError | ValueError | OSError):
            message = str(exc)
            logger.error("sampler: policy v%d cannot be loaded, marking it failed: %s", version, message)
            with self.database.session() as db:
                policies.mark_failed(db, policy_id, message)
            self._waiting_on = policy_id
        else:  # e.g. out of memory: maybe transient, try again later
            logger.exception("sampler: loading policy v%d failed; retrying in 30 s", version)
            self._retry_at[policy_id] = time.monotonic() + 30.0

    # -- sampling ---------------------------------------------------------------------

    def plan(self) -> list[policies.SetPlan]:
        """Per active set, what is missing; emptiest sets first, capped at one batch."""
        assert self.loaded is not None
        budget = self.settings.sampler_batch_size
        with self.database.session() as db:
            plans = [
                policies.sampling_plan(db, ps, self.loaded.id, self.settings.buffer_prompts, budget)
                for ps in policies.active_prompt_sets(db)
            ]
            for plan in plans:
                db.expunge(plan.prompt_set)
                for prompt, _ in plan.prompts:
                    db.expunge(prompt)
        if not self.loaded.chat_template:
            skipped = [p.prompt_set.name for p in plans if conversations.is_conversation(p.prompt_set)]
            if skipped:
                logger.error(
                    "sampler: policy v%d has no chat template; not sampling conversation set(s) %s "
                    "(a conversation is never flattened into plain text)", self.loaded.version, ", ".join(skipped),
                )
            plans = [p for p in plans if not conversations.is_conversation(p.prompt_set)]
        plans.sort(key=lambda p: (p.fill, p.prompt_set.id))
        for plan in plans:
            plan.prompts = [(p, n) for p, n in plan.prompts if p.id not in self._bad_prompts][: max(0, budget)]
            budget -= len(plan.prompts)
        return plans

    def evaluation_step(self) -> int:
        """One batch of missing evaluation samples (trainer/eval_sampler.py); 0 when none wait."""
        if self._evaluations is None:
            from trainer.eval_sampler import EvaluationSampler

            self._evaluations = EvaluationSampler(
                self.database, self.settings, device=self.device, prefer_vllm=self.prefer_vllm,
                generator_factory=self._factory,
            )
        try:
            return int(self._evaluations.step(self.loaded))
        except Exception:  # noqa: BLE001 - evaluation sampling never stops the labeling sampler
            logger.exception("sampler: evaluation sampling failed; retrying later")
            return 0

    def step(self) -> int:
        """One pass: evaluation samples first, if any wait; else switch policy if needed and
        sample one batch. Returns completions (or evaluation samples) written."""
        evaluated = self.evaluation_step()
        if evaluated:
            return evaluated
        if not self.ensure_policy():
            return 0
        assert self.loaded is not None
        plans = self.plan()
        work = [(plan, prompt, n) for plan in plans for prompt, n in plan.prompts]
        if not work:
            return 0
        from trainer.generation import GenRequest, SamplingParams

        requests, k_by_prompt = [], {}
        for plan, prompt, missing in work:
            try:
                params = SamplingParams(**{**DEFAULT_SAMPLING, **(plan.prompt_set.sampling or {})})
            except (TypeError, ValueError) as exc:
                logger.error("sampler: set %r has bad sampling parameters (%s); skipped", plan.prompt_set.name, exc)
                self._bad_prompts.add(prompt.id)
                continue
            if prompt.messages is not None:
                request = GenRequest(key=prompt.id, messages=prompt.messages, k=missing, params=params)
            else:
                request = GenRequest(key=prompt.id, prompt=prompt.text or "", k=missing, params=params)
            requests.append(request)
            k_by_prompt[prompt.id] = plan.prompt_set.k
        if not requests:
            return 0
        started = time.perf_counter()
        results = self._generate(requests)
        seconds = time.perf_counter() - started
        rows = [{"prompt_id": int(r.key), **r.sample_columns()} for r in results]
        with self.database.session() as db:
            if self.database.is_sqlite:  # the recheck and the inserts as one atomic step
                db.execute(text("BEGIN IMMEDIATE"))
            deployed = policies.deployed_policy(db)
            if deployed is None or deployed.id != self.loaded.id:
                logger.info(
                    "sampler: deployed policy changed during the batch; dropping %d completions of v%d",
                    len(rows),
                    self.loaded.version,
                )
                return 0
            written = policies.add_completions(db, self.loaded.id, k_by_prompt, rows)
        prompts_done = len({row["prompt_id"] for row in rows})
        sets = {}
        for plan in plans:
            added = sum(1 for p, _ in plan.prompts if p.id in k_by_prompt)
            buffer = plan.buffer + added
            sets[plan.prompt_set.name] = f"{min(buffer, plan.target)}/{plan.target}"
        report = BatchReport(
            policy_version=self.loaded.version,
            prompts=prompts_done,
            completions=written,
            dropped=len(rows) - written,
            tokens=sum(row["token_count"] for row in rows),
            seconds=seconds,
            sets=sets,
        )
        self.last_report = report
        logger.info(report.line())
        return written

    def _generate(self, requests: list[Any]) -> list[Any]:
        """Generate a batch; when it fails, retry prompt by prompt and set aside the bad ones."""
        assert self.loaded is not None
        generator = self.loaded.generator
        try:
            return list(generator.generate(requests))
        except Exception:  # noqa: BLE001
            if len(requests) == 1:
                logger.exception("sampler: prompt %s cannot be sampled; skipping it", requests[0].key)
                self._bad_prompts.add(int(requests[0].key))
                return []
            logger.exception("sampler: batch of %d prompts failed; retrying one by one", len(requests))
        out: list[Any] = []
        for request in requests:
            out.extend(self._generate([request]))
        return out

    def fill(self, max_batches: int = 1000) -> int:
        """Sample until every buffer is full (or ``max_batches``); returns completions written."""
        total = 0
        for _ in range(max_batches):
            written = self.step()
            total += written
            if written == 0:
                break
        return total

    def close(self) -> None:
        self._release()
        if self._evaluations is not None:
            self._evaluations.release()


def policy_summary(policy: Policy | None) -> str:
    return f"v{policy.version}" if policy is not None else "none"

"""Evaluation samples: the completions that human evaluations compare.

An evaluation in status ``sampling`` (app/services/evaluations.py) names policies whose
samples of its prompts are missing. Each :meth:`EvaluationSampler.step` takes the oldest
such evaluation, picks one policy with missing samples (the deployed one first, whose
generator the main sampler already holds), loads it (kept loaded while there is work for
it), samples up to ``settings.sampler_batch_size`` prompts with each prompt set's sampling
settings, and writes the samples with their seed, params, token count and finish reason.
The generator's RNG is seeded with the evaluation's recorded seed plus the policy id, so a
rerun draws the same batch seeds. When nothing is missing the evaluation becomes
``active`` and compare tasks open.

Samples are rows of ``evaluation_samples``, never ``completions``: they are not served for
ranking, not retired on a redeploy, and not in the trainer's data.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from app.config import Settings
from app.db import Database
from app.models import DEFAULT_SAMPLING, Policy, Prompt, PromptSet
from app.services import evaluations
from trainer import artifacts
from trainer.generator_source import GeneratorSource, close_generator

logger = logging.getLogger(__name__)


class EvaluationSampler(GeneratorSource):
    """Writes the samples that evaluations in status ``sampling`` are missing."""

    def __init__(self, database: Database, settings: Settings, **options: Any) -> None:
        """``options``: ``device``, ``prefer_vllm``, ``generator_factory`` (:class:`GeneratorSource`)."""
        super().__init__(database, settings, **options)
        self._loaded: tuple[int, Any] | None = None  # (policy id, generator) loaded here
        self._retry_at: dict[int, float] = {}

    def _generator(self, policy_id: int, rel_path: str, seed: int) -> Any:
        if self._loaded is not None and self._loaded[0] == policy_id:
            return self._loaded[1]
        self.release()
        path = artifacts.resolve(self.settings.resolved_artifacts_dir, rel_path)
        generator = self._make_generator(path, seed=seed)
        self._loaded = (policy_id, generator)
        return generator

    def release(self) -> None:
        if self._loaded is None:
            return
        close_generator(self._loaded[1], "evaluation sampler")
        self._loaded = None

    def _plan(self, deployed_id: int | None) -> tuple[Any, ...] | None:
        """(evaluation id, its name, policy id, artifact path, [(prompt request, gaps)], seed)
        of the next batch, or None when no evaluation waits for samples."""
        with self.database.session() as db:
            for ev in evaluations.evaluations_to_sample(db):
                missing = evaluations.missing_samples(db, ev)
                if not missing:
                    evaluations.refresh_status(db, ev)
                    logger.info("evaluation sampler: %r has all its samples; it is open for labeling", ev.name)
                    continue
                now = time.monotonic()
                wanted = [pid for pid in dict.fromkeys(p for _, p, _ in missing) if self._retry_at.get(pid, 0) <= now]
                if not wanted:
                    continue
                loaded = self._loaded[0] if self._loaded else None
                policy_id = next((p for p in wanted if p in (loaded, deployed_id)), wanted[0])
                policy = db.get(Policy, policy_id)
                if policy is None:
                    continue
                todo = [(prompt_id, gaps) for prompt_id, p, gaps in missing if p == policy_id]
                todo = todo[: max(1, self.settings.sampler_batch_size)]
                batch = []
                for prompt_id, gaps in todo:
                    prompt = db.get(Prompt, prompt_id)
                    ps = db.get(PromptSet, prompt.prompt_set_id) if prompt else None
                    if prompt is None or ps is None:
                        continue
                    batch.append(
                        (
                            {
                                "key": prompt.id,
                                "text": prompt.text,
                                "messages": prompt.messages,
                                "sampling": {**DEFAULT_SAMPLING, **(ps.sampling or {})},
                            },
                            gaps,
                        )
                    )
                return ev.id, ev.name, policy_id, policy.artifact_path, batch, ev.seed
        return None

    def step(self, deployed: Any = None) -> int:
        """Sample one batch for the oldest evaluation that waits; returns samples written.
        ``deployed``: the main sampler's loaded policy (``.id``, ``.generator``), reused."""
        deployed_id = getattr(deployed, "id", None)
        plan = self._plan(deployed_id)
        if plan is None:
            self.release()
            return 0
        ev_id, ev_name, policy_id, rel_path, batch, seed = plan
        if not batch:
            return 0
        from trainer.generation import GenRequest, SamplingParams

        try:
            generator = (
                deployed.generator
                if deployed is not None and deployed_id == policy_id
                else self._generator(policy_id, rel_path, (seed + policy_id) % 2**31)
            )
        except Exception:  # noqa: BLE001 - a policy that cannot load must not stop the worker
            logger.exception("evaluation sampler: cannot load policy %d for %r; retrying in 60 s", policy_id, ev_name)
            self._retry_at[policy_id] = time.monotonic() + 60.0
            return 0
        requests, gaps_of = [], {}
        for req, gaps in batch:
            params = SamplingParams(**{k: req["sampling"][k] for k in ("temperature", "top_p", "max_new_tokens") if k in req["sampling"]})
            if req["messages"] is not None:
                requests.append(GenRequest(key=req["key"], messages=req["messages"], k=len(gaps), params=params))
            else:
                requests.append(GenRequest(key=req["key"], prompt=req["text"] or "", k=len(gaps), params=params))
            gaps_of[req["key"]] = list(gaps)
        started = time.perf_counter()
        try:
            results = list(generator.generate(requests))
        except Exception:  # noqa: BLE001
            logger.exception("evaluation sampler: a batch for %r failed; retrying in 60 s", ev_name)
            self._retry_at[policy_id] = time.monotonic() + 60.0
            return 0
        rows = []
        for r in results:
            gaps = gaps_of.get(r.key) or []
            if not gaps:
                continue
            rows.append(
                {"prompt_id": int(r.key), "policy_id": policy_id, "sample_index": gaps.pop(0), **r.sample_columns()}
            )
        with self.database.session() as db:
            written = evaluations.add_samples(db, rows)
            ev = evaluations.get_evaluation(db, ev_id)
            evaluations.refresh_status(db, ev)
            status = ev.status
        logger.info(
            "evaluation sampler: wrote %d samples of policy %d for %r in %.1f s (%s)",
            written, policy_id, ev_name, time.perf_counter() - started, status,
        )
        return written

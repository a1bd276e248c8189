"""The sampler on the tiny model: K distinct completions per prompt with their recorded
fields, the per-set buffer, live redeploys, and broken policy directories."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.db import Database
from app.models import Completion, Policy, Task
from app.models.base import utcnow
from app.services import policies
from tests.factories import make_prompt_set, make_prompts
from tests.round_helpers import bootstrap_v0, fast_settings, make_labeler
from trainer import artifacts
from trainer.sampler import Sampler
from trainer.tiny import build_tiny_policy
from trainer.worker import TrainerWorker

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SAMPLING = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8}


def completions_by_prompt(database: Database, status: str = "ready") -> dict[int, list[Completion]]:
    out: dict[int, list[Completion]] = {}
    with database.session() as db:
        for c in db.scalars(select(Completion).where(Completion.status == status).order_by(Completion.id)):
            db.expunge(c)
            out.setdefault(c.prompt_id, []).append(c)
    return out


def new_set(database: Database, name: str, n: int, k: int = 3, **kw: object) -> list[int]:
    with database.session() as db:
        ps = make_prompt_set(db, name, k=k, sampling=SAMPLING, **kw)
        return [p.id for p in make_prompts(db, ps, [f"{name} prompt {i}: say something" for i in range(n)])]


def register_tiny(settings, database: Database, version: int, seed: int) -> int:  # type: ignore[no-untyped-def]
    rel = artifacts.policy_rel_path(version)
    build_tiny_policy(artifacts.resolve(settings.resolved_artifacts_dir, rel), seed=seed)
    with database.session() as db:
        return policies.register_policy(db, version=version, artifact_path=rel).id


def lease(database: Database, prompt_id: int, completion_ids: list[int], status: str = "leased") -> None:
    with database.session() as db:
        labeler = make_labeler(db, f"lab-{prompt_id}-{status}")
        from app.models import Prompt

        prompt = db.get(Prompt, prompt_id)
        db.add(
            Task(
                prompt_id=prompt_id,
                prompt_set_id=prompt.prompt_set_id,
                labeler_id=labeler.id,
                kind="rank",
                status=status,
                completion_ids=completion_ids,
                lease_expires_at=utcnow() + timedelta(minutes=30),
            )
        )


def test_k_distinct_completions_per_prompt_with_the_recorded_fields(settings, database, tiny_base) -> None:
    s = fast_settings(settings, buffer_prompts=10)
    v0 = bootstrap_v0(s, database, tiny_base)
    prompt_ids = new_set(database, "fields", 2, k=4)
    sampler = Sampler(database, s)
    assert sampler.fill() == 8
    got = completions_by_prompt(database)
    assert sorted(got) == sorted(prompt_ids)
    for rows in got.values():
        assert len(rows) == 4
        assert len({r.text.strip() for r in rows}) == 4, [r.text for r in rows]
        for r in rows:
            assert r.policy_id == v0.id and r.status == "ready"
            assert isinstance(r.seed, int)
            assert r.params["temperature"] == 1.0 and r.params["top_p"] == 1.0 and r.params["max_new_tokens"] == 8
            assert 0 <= r.token_count <= 8
            assert r.finish_reason in ("eos", "length")
            assert r.finish_reason == "eos" or r.token_count == 8
            assert r.gen_time_s > 0
    assert sampler.last_report is not None
    assert "sampler: policy v0 wrote 8 completions for 2 prompts" in sampler.last_report.line()
    assert sampler.step() == 0  # everything is buffered: nothing more to do


def test_the_buffer_is_refilled_but_never_the_whole_set(settings, database, tiny_base) -> None:
    s = fast_settings(settings, buffer_prompts=3, sampler_batch_size=2)
    bootstrap_v0(s, database, tiny_base)
    busy = new_set(database, "busy", 10, k=2)
    quiet = new_set(database, "quiet", 2, k=2)
    sampler = Sampler(database, s)
    sampler.fill()
    got = completions_by_prompt(database)
    assert sorted(p for p in got if p in busy) == busy[:3]  # the buffer, not the whole set
    assert sorted(p for p in got if p in quiet) == quiet  # a small set is served as well
    assert sampler.step() == 0

    # Labelers take two buffered prompts (one submitted, one live lease): the buffer refills.
    lease(database, busy[0], [c.id for c in got[busy[0]]], status="submitted")
    lease(database, busy[1], [c.id for c in got[busy[1]]], status="leased")
    sampler.fill()
    got = completions_by_prompt(database)
    assert sorted(p for p in got if p in busy) == busy[:5]

    # An expired lease frees its slot again: that prompt counts in the buffer, nothing new.
    with database.session() as db:
        task = db.scalar(select(Task).where(Task.prompt_id == busy[1]))
        task.lease_expires_at = utcnow() - timedelta(minutes=1)
    assert sampler.fill() == 0


def test_deploying_another_policy_switches_the_sampler(settings, database, tiny_base) -> None:
    s = fast_settings(settings, buffer_prompts=4)
    v0 = bootstrap_v0(s, database, tiny_base)
    prompt_ids = new_set(database, "switch", 4, k=2)
    sampler = Sampler(database, s)
    sampler.fill()
    before = completions_by_prompt(database)
    assert {c.policy_id for rows in before.values() for c in rows} == {v0.id}
    held = before[prompt_ids[0]]
    lease(database, prompt_ids[0], [c.id for c in held])  # a labeler holds this task

    v1 = register_tiny(s, database, 1, seed=7)
    with database.session() as db:
        policies.deploy_policy(db, None, v1)
    generator_v0 = sampler.loaded.generator
    sampler.fill()
    assert sampler.policy_id == v1 and sampler.loaded.generator is not generator_v0
    generator_v1 = sampler.loaded.generator
    sampler.step()
    assert sampler.loaded.generator is generator_v1  # loaded once per policy, not per batch

    ready = completions_by_prompt(database)
    retired = completions_by_prompt(database, "retired")
    # The leased task's completions stay valid; the other v0 completions were retired.
    assert [c.id for c in ready[prompt_ids[0]] if c.policy_id == v0.id] == [c.id for c in held]
    assert sorted(retired) == prompt_ids[1:]
    for pid in prompt_ids[1:]:
        assert {c.policy_id for c in ready[pid]} == {v1} and len(ready[pid]) == 2
    # Rank slots are per (prompt, policy): the v0 lease does not fill the prompt for v1,
    # so the held prompt gets v1's completions as well.
    assert len([c for c in ready[prompt_ids[0]] if c.policy_id == v1]) == 2

    # keep_old_completions: a redeploy retires nothing.
    with database.session() as db:
        policies.deploy_policy(db, None, v0.id)
    keeper = Sampler(database, s.model_copy(update={"keep_old_completions": True}))
    keeper.fill()
    assert completions_by_prompt(database, "retired").keys() == retired.keys()
    with database.session() as db:
        assert db.scalar(select(func.count(Completion.id)).where(Completion.policy_id == v1, Completion.status == "ready")) == 8


def test_a_broken_policy_dir_is_reported_and_the_worker_keeps_running(settings, database, tiny_base) -> None:
    s = fast_settings(settings, buffer_prompts=2)
    v0 = bootstrap_v0(s, database, tiny_base)
    new_set(database, "broken", 2, k=2)
    broken = s.resolved_artifacts_dir / "policies" / "v1"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with database.session() as db:
        v1 = policies.register_policy(db, version=1, artifact_path="policies/v1").id
        policies.deploy_policy(db, None, v1)

    worker = TrainerWorker(s, database, training=False)
    worker.run_once()  # does not raise
    with database.session() as db:
        p = db.get(Policy, v1)
        assert p.status == "failed" and "missing weights" in (p.error or "")
        assert db.scalar(select(func.count(Completion.id))) == 0
        # A failed policy cannot be deployed again until fixed.
        import pytest

        from app.services.errors import Conflict

        with pytest.raises(Conflict, match="failed"):
            policies.deploy_policy(db, None, v1)
        policies.deploy_policy(db, None, v0.id)
    worker.run_once()  # the same worker serves the next deployed policy
    got = completions_by_prompt(database)
    assert len(got) == 2 and {c.policy_id for rows in got.values() for c in rows} == {v0.id}


def test_an_unloadable_deployed_policy_does_not_stop_sampling_later(settings, database, tiny_base) -> None:
    """A policy whose directory was deleted after registration is also reported."""
    s = fast_settings(settings, buffer_prompts=1)
    bootstrap_v0(s, database, tiny_base)
    v1 = register_tiny(s, database, 1, seed=3)
    import shutil

    shutil.rmtree(s.resolved_artifacts_dir / "policies" / "v1")
    with database.session() as db:
        policies.deploy_policy(db, None, v1)
    sampler = Sampler(database, s)
    assert sampler.step() == 0 and sampler.loaded is None
    with database.session() as db:
        assert "does not exist" in db.get(Policy, v1).error
    assert Path(s.resolved_artifacts_dir / "policies" / "v0").is_dir()

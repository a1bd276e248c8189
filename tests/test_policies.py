"""The policy registry: bootstrap v0 from a saved tiny checkpoint (CLI, idempotent),
listing, deploying (one deployed policy at a time), failures, and completion retirement."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.models import AuditLog, Completion, Policy, Task
from app.models.base import utcnow
from app.services import policies
from tests.factories import make_completions, make_policy, make_prompt_set, make_prompts
from tests.round_helpers import make_labeler
from trainer.policy_io import validate_policy_dir

pytestmark = pytest.mark.usefixtures("single_torch_thread")

ROOT = Path(__file__).resolve().parent.parent


def rlhf(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        cwd=ROOT,
        timeout=300,
    )


def test_bootstrap_from_a_saved_tiny_checkpoint_once(db_url, database, tmp_path, tiny_base) -> None:
    env = {
        "RLHF_DATABASE_URL": db_url,
        "RLHF_DATA_DIR": str(tmp_path / "data"),
        "RLHF_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
    }
    r = rlhf(["policy", "bootstrap", "--base", str(tiny_base)], env)
    assert r.returncode == 0, r.stderr
    assert "policy v0 created" in r.stdout
    v0_dir = tmp_path / "artifacts" / "policies" / "v0"
    validate_policy_dir(v0_dir)
    with database.session() as db:
        (v0,) = db.scalars(select(Policy)).all()
        assert (v0.version, v0.artifact_path, v0.status, v0.deployed) == (0, "policies/v0", "ready", True)
        assert v0.base == str(tiny_base) and v0.deployed_at is not None
    stamp = (v0_dir / "config.json").stat().st_mtime_ns

    r = rlhf(["policy", "bootstrap", "--base", str(tiny_base)], env)
    assert r.returncode == 0, r.stderr
    assert "already exists" in r.stdout and "nothing to do" in r.stdout
    assert (v0_dir / "config.json").stat().st_mtime_ns == stamp
    with database.session() as db:
        assert db.scalar(select(func.count(Policy.id))) == 1

    r = rlhf(["policy", "list"], env)
    assert r.returncode == 0 and "v0" in r.stdout and "yes" in r.stdout
    r = rlhf(["policy", "deploy", "v7"], env)
    assert r.returncode == 1 and "no policy version v7" in r.stderr



def test_a_bad_base_is_reported_and_registers_nothing(settings, database, tmp_path) -> None:
    import pytest

    from app.cli.policy import bootstrap_policy
    from trainer.policy_io import PolicyLoadError

    with pytest.raises(PolicyLoadError, match="neither 'smollm2', 'tiny' nor an existing directory"):
        bootstrap_policy(settings, str(tmp_path / "nowhere"), database)
    with database.session() as db:
        assert db.scalar(select(func.count(Policy.id))) == 0
    assert not (settings.resolved_artifacts_dir / "policies" / "v0").exists()


def test_deploy_keeps_exactly_one_deployed_policy(client, database, admin) -> None:
    with database.session() as db:
        v0 = make_policy(db, deployed=True)
        v1 = make_policy(db, deployed=False, artifact_path="policies/v1", parent_id=v0.id, metrics={"win_rate": 0.6})
        v2 = make_policy(db, deployed=False, artifact_path="policies/v2", status="failed", error="bad weights")
        ids = v0.id, v1.id, v2.id
    listed = client.get("/api/v1/policies", headers=admin.headers).json()
    assert [p["version"] for p in listed] == [2, 1, 0]
    assert {"id", "version", "status", "deployed", "parent_id", "metrics"} <= set(listed[0])
    assert listed[1]["parent_id"] == ids[0] and listed[1]["metrics"] == {"win_rate": 0.6}

    r = client.post(f"/api/v1/policies/{ids[1]}/deploy", headers=admin.headers)
    assert r.status_code == 200 and r.json()["deployed"] is True and r.json()["deployed_at"]
    deployed = [p["id"] for p in client.get("/api/v1/policies", headers=admin.headers).json() if p["deployed"]]
    assert deployed == [ids[1]]
    assert client.post(f"/api/v1/policies/{ids[1]}/deploy", headers=admin.headers).status_code == 200  # no-op

    r = client.post(f"/api/v1/policies/{ids[2]}/deploy", headers=admin.headers)
    assert r.status_code == 409 and "failed" in r.json()["detail"] and "bad weights" in r.json()["detail"]
    assert client.post("/api/v1/policies/999/deploy", headers=admin.headers).status_code == 404
    with database.session() as db:
        entries = db.scalars(select(AuditLog).where(AuditLog.action == "policy.deploy")).all()
        assert [(e.actor_id, e.target_id, e.detail["previous_id"]) for e in entries] == [(admin.id, str(ids[1]), ids[0])]
        assert policies.deployed_policy(db).id == ids[1]


def test_retiring_old_completions_keeps_leased_submitted_and_gold_ones(database) -> None:
    with database.session() as db:
        old = make_policy(db, deployed=False)
        new = make_policy(db, deployed=True, artifact_path="policies/v1")
        ps = make_prompt_set(db, "r", k=2)
        free, leased, done = make_prompts(db, ps, ["free", "leased", "done"])
        gold = make_prompts(db, ps, ["gold"], is_gold=True)[0]
        labeler = make_labeler(db)
        by_prompt = {p.id: make_completions(db, p, old, 2) for p in (free, leased, done, gold)}
        for prompt, status in ((leased, "leased"), (done, "submitted")):
            db.add(
                Task(
                    prompt_id=prompt.id, prompt_set_id=ps.id, labeler_id=labeler.id, kind="rank", status=status,
                    completion_ids=[c.id for c in by_prompt[prompt.id]], lease_expires_at=utcnow() + timedelta(minutes=5),
                )
            )
        fresh = make_completions(db, free, new, 2, texts=["n1", "n2"])
        db.flush()
        assert policies.retire_unlabeled_completions(db, keep_policy_id=new.id) == 2
        status = dict(db.execute(select(Completion.id, Completion.status)).all())
        assert {status[c.id] for c in by_prompt[free.id]} == {"retired"}
        for p in (leased, done, gold):
            assert {status[c.id] for c in by_prompt[p.id]} == {"ready"}
        assert {status[c.id] for c in fresh} == {"ready"}
        assert policies.retire_unlabeled_completions(db, keep_policy_id=new.id) == 0

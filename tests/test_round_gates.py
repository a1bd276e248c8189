"""The round's guards on the tiny model: the RM gate before PPO, the deploy gate before
deployment, ``deploy: "force"``; and the one declaration of every round config key."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import pytest
import torch

from app.models import Policy, PromptSet
from app.services import training
from tests.factories import make_prompt_set, make_prompts
from tests.round_helpers import (
    GOOD,
    OPEN_GATES,
    TINY_CONFIG,
    add_ranking,
    bootstrap_v0,
    create_run,
    fast_settings,
    labeled_set,
    logs_of,
    make_labeler,
    run_state,
)
from trainer import config as round_config
from trainer import gates
from trainer.config import RMConfig, param
from trainer.worker import TrainerWorker

pytestmark = pytest.mark.usefixtures("single_torch_thread")

#: The gates as a user gets them (not opened), with sizes for the tiny model.
GATED = {k: v for k, v in TINY_CONFIG.items() if k not in OPEN_GATES}


def random_set(database, policy_id: int, rankings: int = 24) -> int:  # type: ignore[no-untyped-def]
    """Rankings with no consistent preference: a random order of random words."""
    rng = random.Random(7)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    with database.session() as db:
        ps = make_prompt_set(db, "random", k=3, sampling={"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8})
        train = make_prompts(db, ps, [f"Question {i}?" for i in range(rankings - 8)])
        val = make_prompts(db, ps, [f"Held-out question {i}?" for i in range(8)], split="validation")
        labeler = make_labeler(db, "random-labeler")
        for prompt in train + val:
            texts = [" ".join(rng.sample(words, 3)) + f" {prompt.id}-{j}" for j in range(3)]
            add_ranking(db, prompt, labeler, policy_id, texts)
        return ps.id


def test_random_rankings_skip_ppo_with_the_rm_gate_reason_and_deploy_nothing(settings, database, tiny_base) -> None:
    s = fast_settings(settings)
    v0 = bootstrap_v0(s, database, tiny_base)
    run_id = create_run(database, [random_set(database, v0.id)], deploy=True, config=GATED)
    TrainerWorker(s, database, sampler=False).run_once()

    run = run_state(database, run_id)
    assert run.status == "succeeded", (run.error, logs_of(database, run_id))
    assert run.policy_id is None
    rm_gate = run.metrics["gates"]["rm"]
    assert rm_gate["passed"] is False and rm_gate["n"] == 8 * 3 and rm_gate["low"] <= 0.5
    reason = run.metrics["skipped"]["ppo"]
    assert "held-out accuracy" in reason and "24 pairs" in reason and "more ranking(s) would be needed" in reason
    with database.session() as db:
        assert [p.version for p in db.query(Policy).all()] == [0]
        assert db.get(Policy, v0.id).deployed
    assert "rm gate failed" in logs_of(database, run_id)


def _ppo_against_the_reward(monkeypatch: pytest.MonkeyPatch) -> None:
    """PPO optimises the negative of the RM's score: the policy gets worse under the RM
    that the evaluation uses (the issue's way to force a regression)."""
    import trainer.stages as stages

    real = stages.train_ppo

    def inverted(policy, ref, value, reward_fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        return real(policy, ref, value, lambda p, r: -reward_fn(p, r), *args, **kwargs)

    monkeypatch.setattr(stages, "train_ppo", inverted)


REGRESSION = {
    **GATED,
    "rm_gate_min_accuracy": 0.0,  # the RM is trusted; the policy is made worse against it
    "sft_min_demonstrations": 100,  # PPO alone changes the policy
    "rm_epochs": 3,
    "rm_lr": 2e-3,
    "ppo_iterations": 12,
    "ppo_lr": 5e-3,
    "ppo_kl_coef": 0.0,
    "eval_prompts": 10,
    "eval_samples_per_prompt": 6,
}


@pytest.mark.parametrize("deploy", [True, "force"])
def test_a_policy_made_worse_is_registered_not_deployed_unless_forced(
    settings, database, tiny_base, monkeypatch, deploy
) -> None:
    torch.manual_seed(0)
    _ppo_against_the_reward(monkeypatch)
    s = fast_settings(settings)
    v0 = bootstrap_v0(s, database, tiny_base)
    set_id = labeled_set(database, v0.id, rankings=10, demonstrations=0, train_prompts=10, validation_prompts=10)
    run_id = create_run(database, [set_id], deploy=deploy, config=REGRESSION)
    TrainerWorker(s, database, sampler=False).run_once()

    run = run_state(database, run_id)
    assert run.status == "succeeded", (run.error, logs_of(database, run_id))
    assert run.policy_id is not None  # registered either way
    deploy_gate = run.metrics["gates"]["deploy"]
    assert deploy_gate["passed"] is False, deploy_gate
    failed = {c["name"] for c in deploy_gate["checks"] if not c["passed"]}
    assert failed & {"score_vs_parent", "win_rate_vs_parent"}, deploy_gate
    score = next(c for c in deploy_gate["checks"] if c["name"] == "score_vs_parent")
    assert score["value"] < 0 and score["high"] is not None
    with database.session() as db:
        new = db.get(Policy, run.policy_id)
        parent = db.get(Policy, v0.id)
        if deploy == "force":
            assert new.deployed and not parent.deployed
            assert "deploy: force, despite" in run.metrics["summary"]
        else:
            assert not new.deployed and parent.deployed
            assert "not deployed" in run.metrics["summary"] and "below the parent" in run.metrics["summary"]
            assert "v0 stays deployed" in run.metrics["summary"]
    lines = training.gate_lines(run)
    assert any(line.startswith("deploy gate refused") for line in lines), lines


def test_the_rm_gate_is_a_wilson_interval_and_names_the_rankings_needed() -> None:
    low, high = gates.wilson_interval(16, 20)
    assert 0.58 < low < 0.6 and 0.91 < high < 0.93  # 16/20: 0.584-0.919 at 95%
    cfg = RMConfig()
    passed = gates.rm_gate(0.8, 60, cfg, held_out_rankings=10, total_rankings=60)
    assert passed.passed and passed.low > 0.5
    chance = gates.rm_gate(0.55, 18, cfg, held_out_rankings=3, total_rankings=30)
    assert not chance.passed and "more ranking(s) would be needed" in chance.reason
    assert chance.extra["more_rankings_needed"] > 0
    fixed = gates.rm_gate(0.55, 18, dataclasses.replace(cfg, gate_min_accuracy=0.5), held_out_rankings=3,
                          total_rankings=30)
    assert fixed.passed
    none = gates.rm_gate(None, 0, cfg, held_out_rankings=0, total_rankings=3)
    assert not none.passed and "no held-out rankings" in none.reason


def test_the_deploy_gate_refuses_evidence_of_harm_not_a_lack_of_proof() -> None:
    cfg = round_config.GateConfig()
    # Small and noisy, centred at zero: not proof of improvement, not evidence of harm.
    rng = random.Random(0)
    noisy = {"score_deltas": [rng.gauss(0, 1) for _ in range(12)], "wins": [1, 0] * 6, "kls": [0.5] * 12}
    assert all(g.passed for g in gates.deploy_gates(noisy, cfg))
    worse = {"score_deltas": [-1.0 + rng.gauss(0, 0.1) for _ in range(40)], "wins": [0] * 36 + [1] * 4, "kls": [0.5] * 40}
    checks = {g.name: g for g in gates.deploy_gates(worse, cfg)}
    assert not checks["score_vs_parent"].passed and not checks["win_rate_vs_parent"].passed
    drifted = {**noisy, "kls": [50.0] * 12}
    assert not {g.name: g for g in gates.deploy_gates(drifted, cfg)}["kl_from_parent"].passed


def test_one_declaration_reaches_the_schema_the_validation_and_the_dashboard(client, admin, monkeypatch) -> None:
    assert client.post("/api/v1/prompt-sets", json={"name": "s"}, headers=admin.headers).status_code == 201
    @dataclass
    class PPOWithWarmup(round_config.PPOConfig):
        warmup_iterations: int = param(3, "iterations with a linearly rising learning rate", min=0, max=50)

    monkeypatch.setitem(round_config.SECTIONS, "ppo", PPOWithWarmup)
    derived = round_config._round_keys()
    saved = dict(round_config.ROUND_KEYS)
    round_config.ROUND_KEYS.clear()
    round_config.ROUND_KEYS.update(derived)
    try:
        keys = {k["name"]: k for k in client.get("/api/v1/training/config", headers=admin.headers).json()}
        assert keys["ppo_warmup_iterations"]["default"] == 3 and keys["ppo_warmup_iterations"]["maximum"] == 50
        assert "linearly rising" in keys["ppo_warmup_iterations"]["help"]
        from app.services.errors import Invalid

        assert training.validate_config({"ppo_warmup_iterations": 5}) == {"ppo_warmup_iterations": 5}
        with pytest.raises(Invalid, match="ppo_warmup_iterations must be at most 50"):
            training.validate_config({"ppo_warmup_iterations": 51})
        assert round_config.stage_configs({"ppo_warmup_iterations": 7}).ppo.warmup_iterations == 7
        from tests.conftest import login

        login(client, admin.username)
        page = client.get("/admin/runs")
        assert page.status_code == 200 and "ppo_warmup_iterations" in page.text
    finally:
        round_config.ROUND_KEYS.clear()
        round_config.ROUND_KEYS.update(saved)


def test_every_stage_setting_a_user_might_need_is_a_round_key() -> None:
    keys = round_config.ROUND_KEYS
    for name in ("ppo_cliprange", "ppo_vf_coef", "ppo_top_p", "ppo_adaptive_kl", "ppo_target_kl", "rm_patience",
                 "ppo_kl_reference", "rm_init", "sft_select_by_reward", "deploy_max_kl", "dpo_beta"):
        assert name in keys, name
    # Defaults are declared once: the stage dataclass is the default of its key.
    assert keys["ppo_epochs"].default == round_config.PPOConfig().ppo_epochs
    assert keys["rm_max_length"].default == round_config.RMConfig().max_length
    assert round_config.stage_configs({}).ppo == round_config.PPOConfig()


def test_the_run_page_shows_each_gate_with_its_interval_and_reason(client, admin, database) -> None:
    from app.models import TrainingRun
    from tests.conftest import login

    checks = gates.deploy_gates(
        {"score_deltas": [-1.0, -1.2, -0.9, -1.1] * 5, "wins": [0.0] * 20, "kls": [0.4] * 20},
        round_config.GateConfig(),
    )
    rm = gates.rm_gate(0.55, 18, RMConfig(), held_out_rankings=3, total_rankings=30)
    metrics = {
        "summary": "policy v1 from v0 (sft + ppo); not deployed: <b>worse</b>",
        "gates": {"rm": rm.as_dict(), "deploy": {"checks": [c.as_dict() for c in checks], "passed": False,
                                                  "requested": True, "force": False}},
        "skipped": {"ppo": rm.reason},
    }
    with database.session() as db:
        run = TrainingRun(prompt_set_ids=[], status="succeeded", metrics=metrics)
        db.add(run)
        db.flush()
        run_id = run.id
    login(client, admin.username)
    page = client.get(f"/admin/runs/{run_id}").text
    assert 'id="run-gates"' in page and "score vs parent" in page and "win rate vs parent" in page
    assert "below the parent" in page and "more ranking(s) would be needed" in page
    assert "&lt;b&gt;worse&lt;/b&gt;" in page  # escaped
    low, high = checks[0].low, checks[0].high
    assert f"{low:.3f} – {high:.3f}" in page


def test_the_docs_table_is_the_declared_config() -> None:
    from pathlib import Path

    docs = (Path(__file__).resolve().parent.parent / "docs" / "trainer.md").read_text()
    assert round_config.markdown_table() in docs, "regenerate the table in docs/trainer.md: python -m trainer.config"


def test_sft_epoch_by_reward_rm_warm_start_and_a_pinned_kl_reference(settings, database, tiny_base) -> None:
    s = fast_settings(settings)
    v0 = bootstrap_v0(s, database, tiny_base)
    set_id = labeled_set(database, v0.id, rankings=8, demonstrations=4)
    first = create_run(database, [set_id], deploy=True, config={**TINY_CONFIG, "sft_epochs": 2})
    TrainerWorker(s, database, sampler=False).run_once()
    run = run_state(database, first)
    assert run.status == "succeeded", (run.error, logs_of(database, first))
    sft = run.metrics["sft"]
    assert sft["selected_by"] == "reward" and sft["selected_epoch"] in (1, 2)
    assert len(sft["val_rm_score_by_epoch"]) == 2 and "train_loss" in sft  # both figures reported
    assert run.metrics["rm"]["init"].startswith("scratch (no earlier reward model")
    assert "kept epoch" in logs_of(database, first)
    leftovers = [p.name for p in (s.resolved_artifacts_dir / "policies").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the epoch checkpoints were removed

    with database.session() as db:
        extra = make_prompts(db, db.get(PromptSet, set_id), ["One more question?"])
        add_ranking(db, extra[0], make_labeler(db, "second"), run.policy_id, [GOOD[0], "meh", "no"])
    second = create_run(database, [set_id], deploy=True, config={
        **TINY_CONFIG, "rm_init": "previous", "ppo_kl_reference": "v0", "sft_demonstrations": "all",
    })
    TrainerWorker(s, database, sampler=False).run_once()
    run2 = run_state(database, second)
    assert run2.status == "succeeded", (run2.error, logs_of(database, second))
    assert run2.metrics["rm"]["init"].startswith("reward_models/v1")
    assert run2.metrics["ppo"]["kl_reference"] == "v0 (ppo_kl_reference=v0)"
    assert "KL reference v0 (ppo_kl_reference=v0)" in logs_of(database, second)


def test_a_dpo_round_trains_the_policy_on_the_rankings_pairs(settings, database, tiny_base) -> None:
    s = fast_settings(settings)
    v0 = bootstrap_v0(s, database, tiny_base)
    set_id = labeled_set(database, v0.id, rankings=8, demonstrations=4)
    config = {**TINY_CONFIG, "dpo_epochs": 1, "dpo_min_steps": 0, "dpo_max_length": 96}
    run_id = create_run(database, [set_id], stages=["sft", "dpo"], deploy=True, config=config)
    TrainerWorker(s, database, sampler=False).run_once()
    run = run_state(database, run_id)
    assert run.status == "succeeded", (run.error, logs_of(database, run_id))
    assert {"sft", "dpo", "eval"} <= set(run.metrics) and "ppo" not in run.metrics
    assert run.metrics["dpo"]["steps"] >= 1 and "val_accuracy" in run.metrics["dpo"]
    with database.session() as db:
        policy = db.get(Policy, run.policy_id)
        assert policy.metrics["stages"] == ["sft", "dpo"] and policy.deployed
    assert "registered policy v1 from v0 (sft + dpo); deployed" in logs_of(database, run_id)

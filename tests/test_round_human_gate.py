"""``evaluate_with_humans`` on the tiny model: the round registers its new policy, keeps the
parent deployed and opens a blind evaluation of new vs parent on the validation split; the
worker's evaluation sampler writes both policies' samples; the judgment that completes
the evaluation deploys the new policy, or refuses it, as the judgments say."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.models import CompareTask, Evaluation, EvaluationSample, Policy
from app.services import training
from tests.round_helpers import (
    TINY_CONFIG,
    bootstrap_v0,
    create_run,
    fast_settings,
    labeled_set,
    logs_of,
    run_state,
)
from trainer.eval_sampler import EvaluationSampler
from trainer.worker import TrainerWorker

pytestmark = pytest.mark.usefixtures("single_torch_thread")

HUMAN = {**TINY_CONFIG, "evaluate_with_humans": True, "human_eval_threshold": 0.5}


def _settings(settings):  # type: ignore[no-untyped-def]
    """The fast test settings with a heartbeat timeout a loaded machine cannot miss: these
    tests are about the human gate, not about reaping a worker whose heartbeat starved."""
    return fast_settings(settings, heartbeat_timeout_s=60.0)


def _round_with_humans(settings, database, tiny_base, config=HUMAN, deploy: bool | str = True):  # type: ignore[no-untyped-def]
    s = _settings(settings)
    v0 = bootstrap_v0(s, database, tiny_base)
    set_id = labeled_set(database, v0.id, validation_prompts=3)
    run_id = create_run(database, [set_id], deploy=deploy, config=config)
    TrainerWorker(s, database, sampler=False).run_once()
    run = run_state(database, run_id)
    assert run.status == "succeeded", (run.error, logs_of(database, run_id))
    return s, v0, run


def _sample_all(s, database) -> None:  # type: ignore[no-untyped-def]
    sampler = EvaluationSampler(database, s, prefer_vllm=False)
    for _ in range(20):
        sampler.step()
        with database.session() as db:
            if all(ev.status != "sampling" for ev in db.scalars(select(Evaluation))):
                break
    sampler.release()


def _judge(client: TestClient, database, headers, evaluation_id: int, prefer: int) -> bool:  # type: ignore[no-untyped-def]
    """Claim one compare task and choose the side ``prefer`` wrote; False when none is left."""
    r = client.post("/api/v1/tasks/next", json={"evaluation_id": evaluation_id, "kind": "compare"}, headers=headers)
    if r.status_code == 204:
        return False
    task = r.json()
    with database.session() as db:
        link = db.get(CompareTask, task["id"])
        a_policy = db.get(EvaluationSample, link.sample_a_id).policy_id
    choice = "a" if a_policy == prefer else "b"
    r = client.post(f"/api/v1/tasks/{task['id']}/comparison", json={"choice": choice}, headers=headers)
    assert r.status_code == 201, r.text
    return True


@pytest.mark.parametrize("humans_prefer", ["new", "parent"])
def test_the_parent_serves_until_the_human_verdict_then_the_round_deploys_or_refuses(
    humans_prefer: str, settings, database, tiny_base, app, admin, make_account
) -> None:
    s, v0, run = _round_with_humans(settings, database, tiny_base)
    gate = run.metrics["gates"]["human"]
    assert gate["status"] == "pending" and gate["passed"] is None and gate["deploy_on_verdict"] is True
    assert run.metrics["deployed"] is False and run.metrics["gates"]["deploy"]["judged_by"] == "humans"
    assert "v0 stays deployed until the verdict" in run.metrics["summary"]
    with database.session() as db:
        v1 = db.get(Policy, run.policy_id)
        assert v1.version == 1 and not v1.deployed and db.get(Policy, v0.id).deployed
        ev = db.get(Evaluation, gate["evaluation_id"])
        assert ev.training_run_id == run.id and sorted(ev.policy_ids) == sorted([v0.id, v1.id])
        assert ev.split == "validation" and ev.status == "sampling"
        new_id = v1.id

    _sample_all(s, database)  # the worker's evaluation sampler writes both policies' samples
    with database.session() as db:
        ev = db.get(Evaluation, gate["evaluation_id"])
        assert ev.status == "active"
        written = db.execute(select(EvaluationSample.policy_id, EvaluationSample.prompt_id)).all()
        assert {p for p, _ in written} == {v0.id, new_id} and len(written) == 6  # 3 validation prompts x 2

    prefer = new_id if humans_prefer == "new" else v0.id
    with TestClient(app) as client:
        r = client.get(f"/api/v1/training/runs/{run.id}", headers=admin.headers)
        assert r.json()["gates"]["human"]["status"] == "pending"
        labeler = make_account("labeler")
        assert _judge(client, database, labeler.headers, ev.id, prefer)
        assert _judge(client, database, labeler.headers, ev.id, prefer)
        with database.session() as db:  # two of three judged: still the parent
            assert db.get(Policy, v0.id).deployed and not db.get(Policy, new_id).deployed
        assert run_state(database, run.id).metrics["gates"]["human"]["status"] == "pending"
        assert _judge(client, database, labeler.headers, ev.id, prefer)  # the last one: the verdict is in
        assert not _judge(client, database, labeler.headers, ev.id, prefer)
        gates = client.get(f"/api/v1/training/runs/{run.id}", headers=admin.headers).json()["gates"]
        page = client.get(f"/admin/runs/{run.id}", headers=admin.headers)
        listed = {p["id"]: p for p in client.get("/api/v1/policies", headers=admin.headers).json()}
        policies_page = client.get("/admin/policies", headers=admin.headers)

    human = gates["human"]
    assert human["verdict"]["complete"] and human["verdict"]["comparisons"] == 3
    done = run_state(database, run.id)
    lines = "\n".join(training.gate_lines(done))
    with database.session() as db:
        if humans_prefer == "new":
            assert human["status"] == "passed" and human["deployed"] is True
            assert db.get(Policy, new_id).deployed and not db.get(Policy, v0.id).deployed
            assert done.metrics["deployed"] is True and "human verdict: deployed" in done.metrics["summary"]
            assert f"human gate passed (evaluation {ev.id}): humans find v1 at least as good as v0" in lines
        else:
            assert human["status"] == "refused" and human["deployed"] is False
            assert human["verdict"]["win_rate"] == 0.0
            assert db.get(Policy, v0.id).deployed and not db.get(Policy, new_id).deployed
            assert done.metrics["deployed"] is False
            assert "human gate refused" in lines and "do not find v1 at least as good as v0" in lines
    assert "human gate" in logs_of(database, run.id)
    assert page.status_code == 200 and 'id="human-gate"' in page.text
    # The policies API and page show the human verdict beside the RM's reading.
    verdict = listed[new_id]["human_verdict"]
    assert verdict["evaluation_id"] == ev.id and verdict["from_round"] and verdict["complete"]
    assert verdict["win_rate"] == (1.0 if humans_prefer == "new" else 0.0)
    assert "rm_win_rate" in verdict and listed[v0.id]["human_verdict"] is None
    assert policies_page.status_code == 200
    assert "Humans: win rate" in policies_page.text and f"evaluation {ev.id}" in policies_page.text


def test_closing_the_evaluation_early_gives_the_verdict_with_the_judgments_so_far(
    settings, database, tiny_base, app, admin, make_account
) -> None:
    s, v0, run = _round_with_humans(settings, database, tiny_base)
    ev_id = run.metrics["gates"]["human"]["evaluation_id"]
    _sample_all(s, database)
    with TestClient(app) as client:
        assert _judge(client, database, make_account("labeler").headers, ev_id, run.policy_id)
        r = client.post(f"/api/v1/evaluations/{ev_id}/status", json={"status": "closed"}, headers=admin.headers)
        assert r.status_code == 200, r.text
    human = run_state(database, run.id).metrics["gates"]["human"]
    # one win of one: not decided (the Wilson interval still reaches below 0.5) and incomplete
    assert human["status"] == "refused" and "closed before every comparison was judged" in human["reason"]
    with database.session() as db:
        assert db.get(Policy, v0.id).deployed


def test_without_deploy_the_verdict_is_recorded_only(settings, database, tiny_base, app, make_account) -> None:
    s, v0, run = _round_with_humans(settings, database, tiny_base, deploy=False)
    gate = run.metrics["gates"]["human"]
    assert gate["deploy_on_verdict"] is False and "the round did not ask to deploy" in gate["reason"]
    _sample_all(s, database)
    with TestClient(app) as client:
        labeler = make_account("labeler")
        while _judge(client, database, labeler.headers, gate["evaluation_id"], run.policy_id):
            pass
    human = run_state(database, run.id).metrics["gates"]["human"]
    assert human["status"] == "passed" and human["deployed"] is False and "recorded only" in human["reason"]
    with database.session() as db:
        assert db.get(Policy, v0.id).deployed


def test_without_validation_prompts_the_human_gate_refuses_at_once(settings, database, tiny_base) -> None:
    s = _settings(settings)
    v0 = bootstrap_v0(s, database, tiny_base)
    set_id = labeled_set(database, v0.id, validation_prompts=0)
    run_id = create_run(database, [set_id], deploy=True, config=HUMAN)
    TrainerWorker(s, database, sampler=False).run_once()
    run = run_state(database, run_id)
    assert run.status == "succeeded", (run.error, logs_of(database, run_id))
    human = run.metrics["gates"]["human"]
    assert human["status"] == "refused" and "no prompts in the validation split" in human["reason"]
    assert "not deployed" in run.metrics["summary"]
    with database.session() as db:
        assert db.get(Policy, v0.id).deployed and not db.get(Policy, run.policy_id).deployed


def test_evaluation_judgments_train_the_rm_only_when_the_round_says_so(
    settings, database, tiny_base, app, make_account
) -> None:
    from app.models import TrainingRun
    from trainer.data import load_round_data, take_snapshot

    s, v0, run = _round_with_humans(settings, database, tiny_base, deploy=False)
    ev_id = run.metrics["gates"]["human"]["evaluation_id"]
    _sample_all(s, database)
    with TestClient(app) as client:
        labeler = make_account("labeler")
        while _judge(client, database, labeler.headers, ev_id, run.policy_id):
            pass
    with database.session() as db:
        set_ids = list(db.get(TrainingRun, run.id).prompt_set_ids)
        held_out = take_snapshot(db, set_ids, run.finished_at.replace(year=2100))
        assert "judgments" not in held_out["ids"]  # the default: evaluations stay held out
        assert load_round_data(db, held_out).evaluation_pairs == 0
        included = take_snapshot(db, set_ids, run.finished_at.replace(year=2100), include_judgments=True)
        assert included["counts"]["judgments"] == 3
        data = load_round_data(db, included)
        assert data.evaluation_pairs == 3
        pairs = [ex for ex in data.rm_train if len(ex.completions) == 2 and ex.ranking == [[0], [1]]]
        assert len(pairs) == 3
        winners = set(db.scalars(select(EvaluationSample.text).where(EvaluationSample.policy_id == run.policy_id)))
        assert all(ex.completions[0] in winners for ex in pairs)  # the preferred side first

    rm_round = create_run(database, set_ids, stages=["rm"], config={**TINY_CONFIG, "rm_include_evaluations": True})
    TrainerWorker(s, database, sampler=False).run_once()
    done = run_state(database, rm_round)
    assert done.status == "succeeded", (done.error, logs_of(database, rm_round))
    assert done.snapshot["counts"]["judgments"] == 3
    log = logs_of(database, rm_round)
    assert "3 evaluation judgments (rm_include_evaluations)" in log
    assert "3 of the training rankings are evaluation judgments" in log


def test_the_policies_page_flags_where_the_rm_and_the_humans_disagree(app, admin, database, make_account) -> None:
    from app.db import transact
    from app.services import compare_tasks, evaluations
    from app.models import User
    from tests.eval_helpers import add_samples
    from tests.factories import make_policy, make_prompt_set, make_prompts

    with database.session() as db:
        ps = make_prompt_set(db, "disagree", k=2)
        prompts = make_prompts(db, ps, [f"Question {i}?" for i in range(12)], split="validation")
        parent = make_policy(db, deployed=True, artifact_path="policies/p0")
        child = make_policy(db, deployed=False, artifact_path="policies/p1", parent_id=parent.id,
                            metrics={"win_rate": 0.9, "mean_score_new": 1.0, "mean_score_prev": 0.2})
        add_samples(db, [p.id for p in prompts], [parent.id, child.id])
        ev = evaluations.create_evaluation(db, None, name="v1 vs v0", policy_ids=[parent.id, child.id],
                                           prompt_set_ids=[ps.id], seed=3)
        ev_id, child_id, parent_id = ev.id, child.id, parent.id
    labeler = make_account("labeler")
    with database.session() as db:
        user = db.get(User, labeler.id)
        while True:
            task = transact(db, lambda: compare_tasks.next_task(db, user, ev_id, lease_minutes=30))
            if task is None:
                break
            link = db.get(CompareTask, task.id)
            a_policy = db.get(EvaluationSample, link.sample_a_id).policy_id
            choice = "a" if a_policy == parent_id else "b"  # the humans prefer the parent
            transact(db, lambda: compare_tasks.submit_comparison(db, task.id, user, choice=choice))
    with TestClient(app) as client:
        listed = {p["id"]: p for p in client.get("/api/v1/policies", headers=admin.headers).json()}
        one = client.get(f"/api/v1/policies/{child_id}", headers=admin.headers).json()
        page = client.get("/admin/policies", headers=admin.headers).text
    verdict = listed[child_id]["human_verdict"]
    assert verdict["verdict"] == "worse" and verdict["comparisons"] == 12 and verdict["from_round"] is False
    assert verdict["rm_win_rate"] == 0.9 and verdict["rm_score_delta"] == pytest.approx(0.8)
    assert verdict["agreement"] == "disagree" and one["human_verdict"] == verdict
    assert "RM and humans disagree" in page and "RM: win rate 0.90, score +0.800" in page


def test_deploy_force_deploys_at_once_and_the_evaluation_is_recorded_only(settings, database, tiny_base) -> None:
    s, v0, run = _round_with_humans(settings, database, tiny_base, deploy="force")
    gate = run.metrics["gates"]["human"]
    assert gate["status"] == "pending" and gate["deploy_on_verdict"] is False and gate["evaluation_id"]
    assert "deployed already (deploy: force)" in gate["reason"]
    assert run.metrics["deployed"] is True and run.metrics["summary"].count("; deployed") == 1
    assert "recorded only" in run.metrics["summary"]
    with database.session() as db:
        assert db.get(Policy, run.policy_id).deployed


def test_judgments_that_complete_the_evaluation_at_once_settle_it_once(settings, database, tiny_base, make_account) -> None:
    import threading

    from app.db import transact
    from app.models import User
    from app.services import compare_tasks

    s, v0, run = _round_with_humans(settings, database, tiny_base)
    ev_id = run.metrics["gates"]["human"]["evaluation_id"]
    _sample_all(s, database)
    claimed = []
    for _ in range(3):  # three labelers hold the three comparisons
        account = make_account("labeler")
        with database.session() as db:
            user = db.get(User, account.id)
            task = transact(db, lambda: compare_tasks.next_task(db, user, ev_id, lease_minutes=30))
            link = db.get(CompareTask, task.id)
            side_a = db.get(EvaluationSample, link.sample_a_id).policy_id
            claimed.append((account.id, task.id, "a" if side_a == run.policy_id else "b"))
    barrier = threading.Barrier(len(claimed))
    errors: list[BaseException] = []

    def submit(user_id: int, task_id: int, choice: str) -> None:
        try:
            with database.session() as db:
                user = db.get(User, user_id)
                barrier.wait()
                transact(db, lambda: compare_tasks.submit_comparison(db, task_id, user, choice=choice))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=c) for c in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    done = run_state(database, run.id)
    assert done.metrics["gates"]["human"]["status"] == "passed" and done.metrics["deployed"] is True
    assert logs_of(database, run.id).count("human gate passed") == 1
    with database.session() as db:
        assert db.get(Policy, run.policy_id).deployed and not db.get(Policy, v0.id).deployed

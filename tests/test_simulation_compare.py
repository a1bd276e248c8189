"""Simulated labelers answer compare tasks with their preference and flip noise."""

from __future__ import annotations

import random

import pytest
from fastapi.testclient import TestClient

from app.simulation.client import StudioClient
from app.simulation.compare import compare_choice, judgments, run_evaluation, simulate_evaluation
from app.simulation.preferences import load_preference
from tests.eval_helpers import eval_setup
from tests.live_server import serve_in_thread

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _length(prompt: str, text: str) -> float:
    return -len(text)


def test_choice_follows_the_preference_with_flip_noise() -> None:
    assert compare_choice(_length, "p", "short", "much longer") == "a"
    assert compare_choice(_length, "p", "much longer", "short") == "b"
    assert compare_choice(_length, "p", "same", "same") == "tie"
    assert compare_choice(_length, "p", "same", "same", bad_below=0) == "both_bad"
    rng = random.Random(3)
    flips = sum(compare_choice(_length, "p", "s", "long", flip_prob=0.2, rng=rng) == "b" for _ in range(2000))
    assert 330 < flips < 470  # about 20%


def _api(app, account) -> StudioClient:  # type: ignore[no-untyped-def]
    client = StudioClient("http://testserver", account.token)
    client.http = TestClient(app, base_url="http://testserver/api/v1", headers=account.headers)
    return client


def test_simulated_evaluation_ranks_the_preferred_policy_first(app, admin, make_account, database) -> None:  # type: ignore[no-untyped-def]
    from app.services import evaluations

    with database.session() as db:
        setup = eval_setup(db, n_prompts=10, samples=False)
        good, bad = setup.policy_ids[1], setup.policy_ids[0]
        rows = []
        for pid in setup.prompt_ids:
            rows.append({"prompt_id": pid, "policy_id": good, "sample_index": 0, "text": "A short, finished answer.", "seed": 1, "params": {}})
            rows.append({"prompt_id": pid, "policy_id": bad, "sample_index": 0, "text": "rambling " * 80, "seed": 1, "params": {}})
        evaluations.add_samples(db, rows)
    board = run_evaluation(
        _api(app, admin), [_api(app, make_account("labeler")) for _ in range(3)], load_preference("concise"),
        name="sim", policy_ids=setup.policy_ids, prompt_set_ids=[setup.prompt_set_id], overlap=2, flip_prob=0.1, seed=1,
    )
    assert board["comparisons"] == 20
    assert board["policies"][0]["policy_id"] == good


# --- simulate_evaluation: a running service, the worker's sampler, the tiny model ----------


@pytest.fixture
def live_server(settings, database):  # type: ignore[no-untyped-def]
    from app.main import create_app

    with serve_in_thread(create_app(settings, database)) as url:
        yield url


@pytest.fixture
def eval_sampler_thread(settings, database):  # type: ignore[no-untyped-def]
    """The worker's evaluation sampler, stepping in the background as `rlhf worker` does."""
    import threading

    from trainer.eval_sampler import EvaluationSampler

    stop = threading.Event()
    sampler = EvaluationSampler(database, settings.model_copy(update={"sampler_batch_size": 8}), prefer_vllm=False)

    def loop() -> None:
        while not stop.is_set():
            if not sampler.step():
                stop.wait(0.1)
        sampler.release()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=60)


def test_simulate_evaluation_through_a_running_service_with_the_tiny_model(
    settings, database, tiny_base, live_server, eval_sampler_thread, admin
) -> None:
    import shutil

    from sqlalchemy import select

    from app.models import EvaluationSample, Prompt
    from app.services import policies
    from tests.factories import make_prompt_set, make_prompts
    from tests.round_helpers import bootstrap_v0
    from trainer import artifacts

    v0 = bootstrap_v0(settings, database, tiny_base)
    root = settings.resolved_artifacts_dir
    shutil.copytree(artifacts.resolve(root, v0.artifact_path), artifacts.resolve(root, artifacts.policy_rel_path(1)))
    with database.session() as db:
        v1 = policies.register_policy(db, version=1, artifact_path=artifacts.policy_rel_path(1), parent_id=v0.id)
        ps = make_prompt_set(db, "sim-eval", k=2, sampling={"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8})
        make_prompts(db, ps, [f"Train question {i}?" for i in range(3)])
        make_prompts(db, ps, [f"Held-out question {i}?" for i in range(4)], split="validation")
        v1_id = v1.id

    preference = load_preference("concise")
    result = simulate_evaluation(
        live_server, admin.token, [v0.id, v1_id], "sim-eval", labelers=3, preference=preference, overlap=2,
        flip_prob=0.0, seed=5, timeout_s=300, poll_s=0.2,
    )
    board = result["leaderboard"]
    assert result["evaluation"]["status"] == "active" and result["evaluation"]["prompts"] == 4
    assert board["comparisons"] == 4 * 2  # every comparison judged by its overlap of labelers
    assert {row["policy_id"] for row in board["policies"]} == {v0.id, v1_id}
    scores = result["preference_scores"]
    assert set(scores) == {v0.id, v1_id} and all(s["samples"] == 4 for s in scores.values())
    with database.session() as db:  # the means are the preference's over the compared samples
        for pid in (v0.id, v1_id):
            rows = db.execute(
                select(EvaluationSample.text, EvaluationSample.prompt_id).where(EvaluationSample.policy_id == pid)
            ).all()
            expected = [preference(db.get(Prompt, prompt_id).text, text) for text, prompt_id in rows]
            assert scores[pid]["mean_score"] == pytest.approx(sum(expected) / len(expected))
    assert set(result["order_by_rating"]) == set(result["order_by_score"]) == {v0.id, v1_id}
    assert result["agrees"] == (result["order_by_rating"] == result["order_by_score"])
    # noise-free labelers answered every task as the preference says
    with StudioClient(live_server, admin.token) as client:
        for row in judgments(client, result["evaluation_id"]):
            assert row["choice"] == compare_choice(preference, row["prompt"], row["completion_a"], row["completion_b"])


def test_evaluation_table_lists_the_policies_best_first_beside_their_preference_scores() -> None:
    from app.simulation.compare import evaluation_table

    row = {"wins": 7, "losses": 2, "ties": 1, "both_bad": 0}
    result = {
        "leaderboard": {"policies": [
            {"policy_id": 1, "label": "v0", "rank": 2, "rating": 930.4, "rating_interval": [880.0, 975.2],
             **{**row, "wins": 2, "losses": 7}},
            {"policy_id": 5, "label": "v3", "rank": 1, "rating": 1069.6, "rating_interval": None, **row},
        ]},
        "preference_scores": {1: {"mean_score": 0.123, "samples": 10}, 5: {"mean_score": 0.61, "samples": 10}},
    }
    header, first, second = evaluation_table(result)
    assert header[1] == "policy" and first[:3] == ["1", "v3", "1070"] and first[3] == "-"
    assert first[4:] == ["7/2/1", "0.610", "10"] and second[1:4] == ["v0", "930", "880-975"]

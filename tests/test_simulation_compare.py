"""Simulated labelers answer compare tasks with their preference and flip noise."""

from __future__ import annotations

import random

from fastapi.testclient import TestClient

from app.simulation.client import StudioClient
from app.simulation.compare import compare_choice, run_evaluation
from app.simulation.preferences import load_preference
from tests.eval_helpers import eval_setup


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

"""The closed loop end to end on PostgreSQL with the tiny model: two rounds.

A live uvicorn server (the real app), a real trainer worker (sampler + training threads)
and the simulator's labelers, which use only the HTTP API with bearer tokens:

label v0 -> round 1 -> v1 deployed and served -> label v1 -> round 2 from v1 -> v2 deployed
and served -> label v2 (the simulator measures every policy on its own completions).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.config import Settings
from app.db import Database
from app.models import Completion, Ranking, TrainingRun, User
from app.simulation.loop import Simulation, SimulationConfig, write_csv, write_plot
from tests.round_helpers import TINY_CONFIG, fast_settings
from trainer.worker import TrainerWorker

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TRAIN_PROMPTS = [
    "What causes the seasons on Earth?",
    "Why is the sky blue?",
    "How does a refrigerator keep food cold?",
    "Write a haiku about autumn rain.",
    "List three uses of baking soda.",
    "Explain recursion in one sentence.",
]
VALIDATION_PROMPTS = ["What is a hash function?", "Suggest a name for a bakery."]
K = 3


@pytest.fixture
def loop_settings(settings: Settings, backend: str) -> Settings:
    if backend != "postgres":
        pytest.skip("the end-to-end loop runs on PostgreSQL (the production backend)")
    return fast_settings(settings, heartbeat_s=0.5, heartbeat_timeout_s=30.0, worker_poll_s=0.2)


def test_two_rounds_through_the_api_train_deploy_and_serve_each_new_policy(
    server: str, worker: TrainerWorker, database: Database, make_account, tmp_path: Path
) -> None:
    admin = make_account("admin", "admin")
    with httpx.Client(base_url=f"{server}/api/v1", headers=admin.headers, timeout=30) as api:
        r = api.post(
            "/prompt-sets",
            json={
                "name": "loop",
                "k": K,
                "overlap": 1,
                "demonstration_share": 1.0,
                "sampling": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8},
            },
        )
        assert r.status_code == 201, r.text
        set_id = r.json()["id"]
        prompts = [{"prompt": p, "split": "train"} for p in TRAIN_PROMPTS]
        prompts += [{"prompt": p, "split": "validation"} for p in VALIDATION_PROMPTS]
        r = api.post(f"/prompt-sets/{set_id}/prompts", json={"prompts": prompts})
        assert r.json()["imported"] == len(prompts), r.text

        cfg = SimulationConfig(
            url=server,
            token=admin.token,
            prompt_set="loop",
            labelers=2,
            rounds=2,
            preference="concise",
            demonstrations=3,
            flip_prob=0.1,
            train_config=TINY_CONFIG,
            idle_timeout_s=180.0,
            round_timeout_s=600.0,
            poll_s=0.2,
        )
        sim = Simulation(cfg)
        try:
            rows = sim.run()
        finally:
            sim.close()

        # Every policy was labeled on every prompt once (overlap 1, slots per prompt and policy).
        n = len(prompts)
        assert [(r.round, r.policy_version) for r in rows] == [(0, 0), (1, 1), (2, 2)], rows
        assert [r.rankings for r in rows] == [n, n, n]
        assert all(r.note == "" for r in rows), rows
        assert sum(r.demonstrations for r in rows) == len(TRAIN_PROMPTS + VALIDATION_PROMPTS)  # one per prompt
        assert rows[0].demonstrations == 3 and rows[0].kl_from_v0 == 0.0
        for row in rows:
            assert row.preference_score == row.preference_score  # not NaN: validation completions were scored
        for row in rows[1:]:
            assert row.win_rate_vs_prev is not None and 0.0 <= row.win_rate_vs_prev <= 1.0
            assert row.kl_from_v0 is not None and row.kl_from_v0 > -0.05  # a sampled estimate: can dip below 0
            assert row.rm_accuracy is not None  # rankings of validation prompts are held out

        # The runs succeeded; round 2 trained from v1.
        runs = {run["id"]: run for run in api.get("/training/runs").json()}
        assert len(runs) == 2 and all(run["status"] == "succeeded" for run in runs.values()), runs
        policies = {p["version"]: p for p in api.get("/policies").json()}
        assert sorted(policies) == [0, 1, 2]
        assert [v for v, p in policies.items() if p["deployed"]] == [2]
        assert policies[1]["parent_id"] == policies[0]["id"] and policies[2]["parent_id"] == policies[1]["id"]
        assert (rows[1].run_id, rows[2].run_id) == (policies[1]["training_run_id"], policies[2]["training_run_id"])
        with database.session() as db:
            run1, run2 = db.get(TrainingRun, rows[1].run_id), db.get(TrainingRun, rows[2].run_id)
            assert run1.base_policy_id == policies[0]["id"] and run1.policy_id == policies[1]["id"]
            assert run2.base_policy_id == policies[1]["id"] and run2.policy_id == policies[2]["id"]
            # Round 2 trained on round 1's data and the rankings of v1's completions.
            assert run1.snapshot["counts"]["rankings"] == n
            assert run2.snapshot["counts"]["rankings"] == 2 * n

            # Each round's labelers ranked completions of the policy deployed in that round.
            ranked_policy: dict[int, set[int]] = {}
            for ranking in db.scalars(select(Ranking)):
                labeler = db.get(User, ranking.labeler_id)
                round_no = int(labeler.username.split("-")[1][1:])  # sim-r<round>-<tag>-<i>
                ids = [cid for group in ranking.ranking for cid in group]
                policy_ids = set(db.scalars(select(Completion.policy_id).where(Completion.id.in_(ids))))
                ranked_policy.setdefault(round_no, set()).update(policy_ids)
            assert ranked_policy == {v: {policies[v]["id"]} for v in (0, 1, 2)}
            # New completions after the last deploy come from v2 only.
            fresh = set(
                db.scalars(
                    select(Completion.policy_id).where(
                        Completion.status == "ready", Completion.created_at > run2.finished_at
                    )
                )
            )
            assert fresh == {policies[2]["id"]}

        # The exports count what was labeled.
        rankings = [json.loads(line) for line in api.get("/exports/rankings.jsonl", params={"prompt_set_id": set_id}).text.splitlines()]
        assert len(rankings) == 3 * n
        assert Counter(r["policy"] for r in rankings) == {0: n, 1: n, 2: n}
        expected_pairs = sum(
            len(a) * len(b) for r in rankings for i, a in enumerate(r["ranking"]) for b in r["ranking"][i + 1 :]
        )
        comparisons = api.get("/exports/comparisons.jsonl", params={"prompt_set_id": set_id}).text.splitlines()
        assert len(comparisons) == expected_pairs > 0
        demos = api.get("/exports/demonstrations.jsonl", params={"prompt_set_id": set_id}).text.splitlines()
        assert len(demos) == sum(r.demonstrations for r in rows)

    csv_path = write_csv(rows, tmp_path / "simulation.csv")
    assert len(csv_path.read_text().splitlines()) == 4
    png = write_plot(rows, tmp_path / "simulation.png", "concise")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

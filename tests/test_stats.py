"""Progress, labeler quality (agreement, Kendall tau, gold accuracy) and requeue."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import select

from app.models import AuditLog, Completion, Prompt, Ranking, Task
from app.services.stats import compare_rankings, gold_agreement, ordered_pairs, pair_count
from tests.admin_helpers import add_demonstration, add_ranking, add_skip
from tests.factories import make_completions, make_policy, make_prompt_set, make_prompts, ready_set


def test_ranking_arithmetic_by_hand() -> None:
    full = [[1], [2], [3], [4]]
    assert pair_count(full) == 6 and len(list(ordered_pairs(full))) == 6
    assert list(ordered_pairs([[1], [2, 3]])) == [(1, 2, 1, 2), (1, 3, 1, 2)]
    tied = [[1], [2, 3], [4]]
    assert pair_count(tied) == 5 and (2, 3, 2, 2) not in list(ordered_pairs(tied))
    # One swapped pair out of six: 5 agree; tau = (5 - 1) / 6.
    c = compare_rankings(full, [[2], [1], [3], [4]])
    assert (c.agree, c.comparable) == (5, 6) and c.tau == pytest.approx(4 / 6)
    # A tie in one ranking: that pair is not comparable; tau-b = 5 / sqrt(6 * 5).
    c = compare_rankings(full, [[1, 2], [3], [4]])
    assert (c.agree, c.comparable) == (5, 5) and c.tau == pytest.approx(5 / math.sqrt(30))
    # Fully reversed: tau = -1; only common completions count.
    c = compare_rankings(full, [[4], [3], [2], [1], [9]])
    assert (c.agree, c.comparable, c.tau) == (0, 6, pytest.approx(-1.0))
    assert compare_rankings([[1, 2]], [[1], [2]]).tau is None  # all tied: undefined
    assert gold_agreement(full, [[1], [2], [4], [3]]) == (5, 6)
    assert gold_agreement(full, [[1, 2], [3], [4]]) == (5, 6)  # a tie where gold has an order is a miss
    assert gold_agreement([[1, 2], [3]], [[2], [1], [3]]) == (2, 2)  # gold ties are not scored


def _people(make_account):  # type: ignore[no-untyped-def]
    return make_account("labeler", "alice"), make_account("labeler", "bob"), make_account("labeler", "carol")


def test_agreement_and_kendall_tau_against_a_hand_computed_case(client, admin, make_account, database) -> None:
    alice, bob, carol = _people(make_account)
    with database.session() as db:
        _, prompts, _ = ready_set(db, "agree", n_prompts=3, k=4, overlap=2)
        ids = {}
        for p in prompts:
            ids[p.id] = [c.id for c in db.scalars(select_completions(p.id))]
        p1, p2, p3 = prompts
        a, b, c, d = ids[p1.id]
        add_ranking(db, p1, alice.id, [[a], [b], [c], [d]])
        add_ranking(db, p1, bob.id, [[b], [a], [c], [d]])  # one swap: 5/6, tau 4/6
        a, b, c, d = ids[p2.id]
        add_ranking(db, p2, alice.id, [[a], [b], [c], [d]])
        add_ranking(db, p2, carol.id, [[a, b], [c], [d]])  # a tie: 5/5, tau 5/sqrt(30)
        a, b, c, d = ids[p3.id]
        add_ranking(db, p3, bob.id, [[d], [c], [b], [a]])  # nobody else: not shared
    r = client.get("/api/v1/stats", headers=admin.headers)
    assert r.status_code == 200, r.text
    rows = {row["username"]: row for row in r.json()["labelers"]}
    tau1, tau2 = 4 / 6, 5 / math.sqrt(30)
    assert rows["alice"]["pairwise_agreement"] == pytest.approx(10 / 11)
    assert rows["alice"]["agreement_pairs"] == 11 and rows["alice"]["shared_rankings"] == 2
    assert rows["alice"]["kendall_tau"] == pytest.approx((tau1 + tau2) / 2)
    assert rows["bob"]["pairwise_agreement"] == pytest.approx(5 / 6)
    assert rows["bob"]["kendall_tau"] == pytest.approx(tau1)
    assert rows["carol"]["pairwise_agreement"] == pytest.approx(1.0)
    assert rows["carol"]["kendall_tau"] == pytest.approx(tau2)
    overall = r.json()["agreement"]
    assert overall["pairwise_agreement"] == pytest.approx(10 / 11) and overall["ranking_pairs"] == 2
    assert overall["kendall_tau"] == pytest.approx((tau1 + tau2) / 2)
    assert "admin" not in rows  # admins who never labeled are not in the labeler table


def select_completions(prompt_id: int):  # type: ignore[no-untyped-def]
    return select(Completion).where(Completion.prompt_id == prompt_id).order_by(Completion.id)


def test_gold_accuracy(client, admin, make_account, database) -> None:
    alice, bob, carol = _people(make_account)
    with database.session() as db:
        ps, prompts, _ = ready_set(db, "gold", n_prompts=2, k=4)
        gold_prompt = prompts[0]
        a, b, c, d = [x.id for x in db.scalars(select_completions(gold_prompt.id))]
        set_id, gold_id = ps.id, gold_prompt.id
    r = client.put(f"/api/v1/prompts/{gold_id}/gold", json={"ranking": [[a], [b], [c], [d]]}, headers=admin.headers)
    assert r.status_code == 200 and r.json()["is_gold"] is True
    with database.session() as db:
        gp = db.get(Prompt, gold_id)
        add_ranking(db, gp, alice.id, [[a], [b], [d], [c]])  # 5 of 6
        add_ranking(db, gp, bob.id, [[d], [c], [b], [a]])  # 0 of 6
        add_ranking(db, gp, carol.id, [[a, b], [c], [d]])  # tie where gold orders: 5 of 6
    rows = {x["username"]: x for x in client.get(f"/api/v1/stats?prompt_set_id={set_id}", headers=admin.headers).json()["labelers"]}
    assert rows["alice"]["gold_accuracy"] == pytest.approx(5 / 6) and rows["alice"]["gold_pairs"] == 6
    assert rows["bob"]["gold_accuracy"] == 0.0 and rows["bob"]["gold_rankings"] == 1
    assert rows["carol"]["gold_accuracy"] == pytest.approx(5 / 6)


def test_progress_by_split_and_throughput(client, admin, make_account, database) -> None:
    alice, bob, _ = _people(make_account)
    with database.session() as db:
        ps = make_prompt_set(db, "progress", k=3, overlap=2)
        train = make_prompts(db, ps, ["t1", "t2", "t3"], split="train")
        val = make_prompts(db, ps, ["v1", "v2"], split="validation")
        policy = make_policy(db)
        comps = {p.id: [c.id for c in make_completions(db, p, policy, 3)] for p in (*train[:2], val[0])}
        x, y, z = comps[train[0].id]
        add_ranking(db, train[0], alice.id, [[x], [y], [z]], seconds=10)  # 3 pairs
        add_ranking(db, train[0], bob.id, [[x, y], [z]], seconds=30)  # 2 pairs
        x, y, z = comps[train[1].id]
        add_ranking(db, train[1], alice.id, [[z], [y], [x]], seconds=20)  # 3 pairs
        x, y, z = comps[val[0].id]
        add_ranking(db, val[0], bob.id, [[x], [y, z]], seconds=50)  # 2 pairs
        add_demonstration(db, train[2], alice.id, "a demo", seconds=40)
        add_skip(db, val[1], bob.id)
        set_id = ps.id
    body = client.get(f"/api/v1/stats?prompt_set_id={set_id}", headers=admin.headers).json()
    (prog,) = body["prompt_sets"]
    t, v = prog["splits"]["train"], prog["splits"]["validation"]
    assert (t["prompts"], t["prompts_ready"], t["prompts_labeled"], t["rankings"], t["comparisons"]) == (3, 2, 2, 3, 8)
    assert (t["demonstrations"], t["skips"], t["slots"], t["slots_filled"]) == (1, 0, 6, 3)
    assert (v["prompts"], v["prompts_ready"], v["rankings"], v["comparisons"], v["skips"]) == (2, 1, 1, 2, 1)
    assert prog["total"]["rankings"] == 4 and prog["total"]["fraction"] == pytest.approx(4 / 10)
    rows = {x["username"]: x for x in body["labelers"]}
    assert rows["alice"]["submissions"] == 3 and rows["alice"]["median_seconds"] == pytest.approx(20)
    assert rows["alice"]["skip_rate"] == 0.0 and rows["alice"]["last_active_at"] is not None
    assert rows["bob"]["submissions"] == 2 and rows["bob"]["skip_rate"] == pytest.approx(1 / 3)
    assert rows["bob"]["median_seconds"] == pytest.approx(40)
    assert rows["carol"]["submissions"] == 0 and rows["carol"]["skip_rate"] is None


def test_requeue_sends_a_labelers_rankings_back(client, admin, make_account, database) -> None:
    alice, bob, _ = _people(make_account)
    with database.session() as db:
        ps, prompts, _ = ready_set(db, "rq", n_prompts=2, k=2, overlap=1)
        _, other_prompts, _ = ready_set(db, "rq2", n_prompts=1, k=2)
        for p in prompts + other_prompts:
            a, b = [c.id for c in db.scalars(select_completions(p.id))]
            add_ranking(db, p, alice.id, [[a], [b]])
        a, b = [c.id for c in db.scalars(select_completions(prompts[0].id))]
        add_ranking(db, prompts[0], bob.id, [[b], [a]])
        set_id = ps.id
    r = client.post(f"/api/v1/users/{alice.id}/requeue", json={"prompt_set_id": set_id}, headers=admin.headers)
    assert r.status_code == 200 and r.json() == {"rankings": 2, "demonstrations": 0, "tasks": 2}
    with database.session() as db:
        statuses = {(r.labeler_id, r.status) for r in db.scalars(select(Ranking))}
        tasks = sorted(t.status for t in db.scalars(select(Task).where(Task.labeler_id == alice.id)))
        audit = db.scalar(select(AuditLog).where(AuditLog.action == "labeler.requeue"))
    assert statuses == {(alice.id, "requeued"), (alice.id, "active"), (bob.id, "active")}
    assert tasks == ["requeued", "requeued", "submitted"]  # the other set's task is untouched
    assert audit.actor_id == admin.id and audit.detail["rankings"] == 2
    prog = client.get(f"/api/v1/stats?prompt_set_id={set_id}", headers=admin.headers).json()
    assert prog["prompt_sets"][0]["total"]["rankings"] == 1
    row = next(x for x in prog["labelers"] if x["username"] == "alice")
    assert row["requeued"] == 2 and row["rankings"] == 0
    export = client.get(f"/api/v1/exports/rankings.jsonl?prompt_set_id={set_id}", headers=admin.headers)
    assert export.text.count("\n") == 1 and '"labeler": "bob"' in export.text
    # Without a set: everything left of hers goes.
    r = client.post(f"/api/v1/users/{alice.id}/requeue", headers=admin.headers)
    assert r.json()["rankings"] == 1
    assert client.post("/api/v1/users/9999/requeue", headers=admin.headers).status_code == 404


def test_stats_and_requeue_refuse_labelers_and_anonymous(client, labeler) -> None:
    assert client.get("/api/v1/stats", headers=labeler.headers).status_code == 403
    assert client.get("/api/v1/stats").status_code == 401
    assert client.post(f"/api/v1/users/{labeler.id}/requeue", headers=labeler.headers).status_code == 403
    assert client.post(f"/api/v1/users/{labeler.id}/requeue").status_code == 401
    assert client.get("/api/v1/audit", headers=labeler.headers).status_code == 403
    assert client.get("/api/v1/audit").status_code == 401

"""Rank slots per (prompt, policy): the closed loop labels the same prompts again after a redeploy.

Round 1 ranks policy v0's completions; deploying v1 opens every prompt again for v1's
completions (once per labeler per policy, ``overlap`` per pair), the sampler's plan asks
for v1 completions of prompts that were full on v0, progress and stats describe v1's work,
and the 0002 migration backfills ``Task.policy_id`` of existing rank tasks.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import select

from app import migrate
from app.db import make_engine
from app.models import Completion, Policy, Prompt, PromptSet, Task
from app.services import policies
from app.services.tasks import takes_slot
from tests.factories import make_completions, make_policy, ready_set


def _next(client, account, set_id: int):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/tasks/next", json={"prompt_set_id": set_id, "kind": "rank"}, headers=account.headers)


def _rank(client, account, task: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    body = {"ranking": [[c["id"]] for c in task["completions"]]}
    r = client.post(f"/api/v1/tasks/{task['id']}/ranking", json=body, headers=account.headers)
    assert r.status_code == 201, r.text


def _progress(client, account, set_id: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return client.get("/api/v1/tasks/progress", params={"prompt_set_id": set_id}, headers=account.headers).json()


def _slots(client, admin, set_id: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    (prog,) = client.get(f"/api/v1/stats?prompt_set_id={set_id}", headers=admin.headers).json()["prompt_sets"]
    return prog["total"]["slots_filled"], prog["total"]["slots"]


def _policy_of(database, completion_ids: list[int]) -> set[int]:  # type: ignore[no-untyped-def]
    with database.session() as db:
        return set(db.scalars(select(Completion.policy_id).where(Completion.id.in_(completion_ids))))


def test_after_a_redeploy_every_prompt_is_ranked_again_on_the_new_policy(
    client, database, admin, make_account
) -> None:
    with database.session() as db:
        ps, prompts, v0 = ready_set(db, "rounds", n_prompts=3, k=2, overlap=1)
        set_id, v0_id, prompt_ids = ps.id, v0.id, {p.id for p in prompts}
    a, b = make_account(), make_account()

    # Round 1: a ranks every prompt of v0; overlap 1 leaves nothing for anyone.
    for _ in prompt_ids:
        task = _next(client, a, set_id).json()
        assert _policy_of(database, [c["id"] for c in task["completions"]]) == {v0_id}
        _rank(client, a, task)
    assert _next(client, a, set_id).status_code == 204
    assert _next(client, b, set_id).status_code == 204
    assert _progress(client, a, set_id)["rank_left"] == 0
    assert _progress(client, a, set_id)["waiting_for_completions"] == 0
    assert _slots(client, admin, set_id) == (3, 3)

    # Deploy v1. Until the sampler has written its completions nothing is served, and the
    # prompts count as waiting for completions (of v1), not as done.
    with database.session() as db:
        v1_id = make_policy(db, artifact_path="policies/v1").id
    assert _next(client, a, set_id).status_code == 204
    p = _progress(client, a, set_id)
    assert p["rank_left"] == 0 and p["waiting_for_completions"] == 3
    assert _slots(client, admin, set_id) == (0, 3)  # the stats describe v1's work

    with database.session() as db:
        v1 = db.get(Policy, v1_id)
        for pid in sorted(prompt_ids):
            make_completions(db, db.get(Prompt, pid), v1, 2, texts=[f"v1 {pid} a", f"v1 {pid} b"])
    assert _progress(client, a, set_id)["rank_left"] == 3

    # Round 2: a (who ranked v0 of every prompt) and b both get v1's completions.
    served: list[tuple[str, dict[str, Any]]] = []
    for account, name in ((a, "a"), (b, "b"), (a, "a")):
        task = _next(client, account, set_id).json()
        assert _policy_of(database, [c["id"] for c in task["completions"]]) == {v1_id}
        served.append((name, task))
        _rank(client, account, task)
    assert _next(client, a, set_id).status_code == 204
    assert _next(client, b, set_id).status_code == 204
    assert sorted(t["prompt_id"] for _, t in served) == sorted(prompt_ids)  # each prompt once on v1
    assert [name for name, _ in served] == ["a", "b", "a"]
    assert _slots(client, admin, set_id) == (3, 3)

    with database.session() as db:
        rows = db.execute(select(Task.prompt_id, Task.policy_id, Task.labeler_id).where(Task.kind == "rank")).all()
    v1_rows = [r for r in rows if r.policy_id == v1_id]
    assert len(v1_rows) == len(prompt_ids)  # exactly one v1 task per prompt at overlap 1
    assert sorted(r.prompt_id for r in rows if r.policy_id == v0_id) == sorted(prompt_ids)
    assert len(rows) == 2 * len(prompt_ids)


def test_a_labeler_is_kept_off_a_pair_not_a_prompt_and_the_deployed_policy_is_served_first(
    client, database, make_account
) -> None:
    with database.session() as db:
        ps, (prompt,), v0 = ready_set(db, "pairs", n_prompts=1, k=2, overlap=2)
        set_id, v0_id = ps.id, v0.id
    a, b, carol = make_account(), make_account(), make_account()
    ta = _next(client, a, set_id).json()
    _rank(client, a, ta)
    assert _next(client, a, set_id).status_code == 204  # a is off (prompt, v0)

    with database.session() as db:
        v1 = make_policy(db, artifact_path="policies/v1")
        v1_ids = {x.id for x in make_completions(db, db.get(Prompt, prompt.id), v1, 2)}
        v1_id = v1.id
    # (prompt, v0) still has a free slot, but the deployed v1 has K: it is what is served.
    tb = _next(client, b, set_id).json()
    assert {x["id"] for x in tb["completions"]} == v1_ids
    ta2 = _next(client, a, set_id).json()
    assert ta2["prompt_id"] == ta["prompt_id"] and {x["id"] for x in ta2["completions"]} == v1_ids
    assert _next(client, carol, set_id).status_code == 204  # (prompt, v1): 2 live leases = overlap 2
    _rank(client, a, ta2)
    assert _next(client, a, set_id).status_code == 204  # a is off (prompt, v1) as well now
    with database.session() as db:
        assert db.get(Task, ta["id"]).policy_id == v0_id
        assert db.get(Task, ta2["id"]).policy_id == db.get(Task, tb["id"]).policy_id == v1_id

    # b lets its lease run out: the slot of (prompt, v1) frees for carol, and the expired task
    # of b cannot be submitted any more (its slot was taken), per policy as before.
    with database.session() as db:
        db.get(Task, tb["id"]).lease_expires_at = datetime.now(UTC) - timedelta(minutes=1)
    tc = _next(client, carol, set_id).json()
    assert {x["id"] for x in tc["completions"]} == v1_ids
    r = client.post(
        f"/api/v1/tasks/{tb['id']}/ranking",
        json={"ranking": [[x["id"]] for x in tb["completions"]]},
        headers=b.headers,
    )
    assert r.status_code == 409 and "slot" in r.json()["detail"]


def test_the_sampling_plan_asks_for_the_deployed_policy_on_prompts_full_on_the_old_one(
    client, database, make_account
) -> None:
    with database.session() as db:
        ps, prompts, v0 = ready_set(db, "plan", n_prompts=3, k=2, overlap=1)
        set_id, v0_id = ps.id, v0.id
    a = make_account()
    ranked = []
    for _ in range(2):  # a ranks two of the three prompts on v0
        task = _next(client, a, set_id).json()
        _rank(client, a, task)
        ranked.append(task["prompt_id"])
    with database.session() as db:
        ps = db.get(PromptSet, set_id)
        before = policies.sampling_plan(db, ps, v0_id, buffer_prompts=10, limit=10)
        assert before.buffer == 1 and before.prompts == []  # v0: one labelable prompt, buffered
        v1 = make_policy(db, artifact_path="policies/v1")
        plan = policies.sampling_plan(db, ps, v1.id, buffer_prompts=10, limit=10)
        # every prompt is labelable for v1, the two ranked on v0 included; none has v1 completions
        assert plan.buffer == 0
        assert [(p.id, need) for p, need in plan.prompts] == [(p.id, 2) for p in prompts]
        # a live v1 lease takes a v1 slot: that prompt drops out of the plan
        make_completions(db, prompts[0], v1, 2)
        db.add(
            Task(
                prompt_id=prompts[0].id, prompt_set_id=set_id, labeler_id=a.id, kind="rank", status="leased",
                completion_ids=[c.id for c in db.scalars(select(Completion).where(
                    Completion.prompt_id == prompts[0].id, Completion.policy_id == v1.id))],
                lease_expires_at=datetime.now(UTC) + timedelta(minutes=5),
            )
        )
        db.flush()
        leased = db.scalar(select(Task).where(Task.policy_id == v1.id))
        assert leased is not None  # policy_id defaults to the policy of the first completion
        now = datetime.now(UTC)
        assert db.scalar(select(sa.func.count(Task.id)).where(Task.policy_id == v1.id, takes_slot(now))) == 1
        plan = policies.sampling_plan(db, ps, v1.id, buffer_prompts=10, limit=10)
        assert plan.buffer == 0 and [p.id for p, _ in plan.prompts] == [p.id for p in prompts[1:]]


# ----------------------------------------------------------------- migration backfill

_JSON = {"completion_ids", "metrics", "sampling", "metadata", "params", "ranking", "ratings"}


def _insert(conn: sa.Connection, table: str, **values: Any) -> None:
    cols = [sa.column(k, sa.JSON() if k in _JSON else None) for k in values]
    conn.execute(sa.table(table, *cols).insert().values(**values))


def test_the_migration_backfills_the_policy_of_existing_rank_tasks(db_factory) -> None:
    url = db_factory.create(migrated=False)
    engine = None
    try:
        migrate.upgrade(url, "0001")
        engine = sa.create_engine(url)
        now = datetime.now(UTC)
        with engine.begin() as conn:
            _insert(conn, "users", id=1, username="lab", password_hash="x", role="labeler", is_active=True,
                    created_at=now)
            _insert(conn, "prompt_sets", id=1, name="old", description="", guidelines="", k=2, overlap=1,
                    sampling={}, demonstration_share=0.0, status="active", created_at=now, updated_at=now)
            _insert(conn, "prompts", id=1, prompt_set_id=1, text="p", split="train", content_hash="h1", metadata={},
                    wants_demonstration=True, is_gold=False, created_at=now)
            for pid, version in ((1, 0), (2, 1)):
                _insert(conn, "policies", id=pid, version=version, artifact_path=f"policies/v{version}",
                        status="ready", deployed=pid == 2, metrics={}, base="", created_at=now)
            for cid, policy_id in ((1, 1), (2, 1), (3, 2), (4, 2)):
                _insert(conn, "completions", id=cid, prompt_id=1, policy_id=policy_id, text=f"c{cid}", params={},
                        token_count=1, finish_reason="eos", gen_time_s=0.1, status="ready", created_at=now)
            task = {"prompt_id": 1, "prompt_set_id": 1, "labeler_id": 1, "lease_expires_at": now, "created_at": now}
            _insert(conn, "tasks", id=1, kind="rank", status="submitted", completion_ids=[2, 1], **task)
            _insert(conn, "tasks", id=2, kind="rank", status="leased", completion_ids=[4, 3], **task)
            _insert(conn, "tasks", id=3, kind="rank", status="skipped", completion_ids=[], **task)
            _insert(conn, "tasks", id=4, kind="demonstrate", status="submitted", completion_ids=[], **task)
            _insert(conn, "rankings", id=1, task_id=1, prompt_id=1, labeler_id=1, ranking=[[2], [1]], ratings={},
                    all_unacceptable=False, comment="", payload_hash="h", status="active", created_at=now)
            _insert(conn, "demonstrations", id=1, task_id=4, prompt_id=1, labeler_id=1, text="d", payload_hash="d",
                    status="active", created_at=now)
        engine.dispose()

        migrate.upgrade(url)
        with engine.connect() as conn:
            got = dict(conn.execute(sa.text("SELECT id, policy_id FROM tasks ORDER BY id")).all())
            assert got == {1: 1, 2: 2, 3: None, 4: None}
            # recreating the table (SQLite batch mode) kept the rows that reference tasks
            assert conn.execute(sa.text("SELECT count(*) FROM rankings")).scalar() == 1
            assert conn.execute(sa.text("SELECT count(*) FROM demonstrations")).scalar() == 1
        engine.dispose()
        app_engine = make_engine(url)  # foreign keys on, as the app runs
        try:
            with app_engine.begin() as conn:
                conn.execute(sa.text("DELETE FROM policies WHERE id = 2"))
                assert conn.execute(sa.text("SELECT policy_id FROM tasks WHERE id = 2")).scalar() is None
        finally:
            app_engine.dispose()

        migrate.downgrade(url, "0001")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM tasks")).scalar() == 4
            assert conn.execute(sa.text("SELECT count(*) FROM rankings")).scalar() == 1
            assert conn.execute(sa.text("SELECT count(*) FROM demonstrations")).scalar() == 1
        engine.dispose()
    finally:
        if engine is not None:
            engine.dispose()
        db_factory.drop(url)

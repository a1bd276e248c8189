"""Migrations on a non-empty database: first revision -> head, with data, on both backends.

A database is upgraded to revision 0001 (the first), filled with realistic rows in every
table through the 0001 schema as it was (reflected, not today's models), then upgraded to
head. Every row must survive with every value it had (SQLite's batch mode recreates
tables, which with foreign keys on would cascade-delete children), each column a later
revision added must hold what :data:`NEW_COLUMNS` says old rows get, and the application
must work on the result: the ORM loads every row, exports see the old rankings, and a
labeler can claim a task.

A migration that adds a column must say here what existing rows hold in it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import MetaData, Table, insert, select

import app.models  # noqa: F401 - registers every model on Base.metadata
from app import migrate
from app.db import Base, Database, make_engine
from app.models import User
from app.services import exports, tasks

FIRST = "0001"
T0 = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def sample_rows() -> dict[str, list[dict[str, Any]]]:
    """Rows for every table of revision 0001, in insertion (foreign key) order."""
    return {
        "users": [
            {"id": 1, "username": "admin", "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$x$y", "role": "admin",
             "is_active": True, "created_at": at(0), "last_active_at": at(50)},
            {"id": 2, "username": "alice", "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$a$b", "role": "labeler",
             "is_active": True, "created_at": at(1), "last_active_at": None},
            {"id": 3, "username": "bob", "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$c$d", "role": "labeler",
             "is_active": False, "created_at": at(2), "last_active_at": at(3)},
        ],
        "api_tokens": [
            {"id": 1, "user_id": 1, "name": "ci", "token_hash": "a" * 64, "prefix": "rlhf_abcdefg",
             "created_at": at(1), "last_used_at": at(40), "revoked_at": None},
            {"id": 2, "user_id": 2, "name": "old", "token_hash": "b" * 64, "prefix": "rlhf_hijklmn",
             "created_at": at(2), "last_used_at": None, "revoked_at": at(30)},
        ],
        "user_sessions": [
            {"id": 1, "session_hash": "c" * 64, "user_id": 2, "csrf_token": "d" * 43, "created_at": at(5),
             "expires_at": at(5 + 60 * 12), "revoked_at": None},
        ],
        "login_failures": [
            {"id": 1, "username": "alice", "client": "127.0.0.1", "created_at": at(4)},
        ],
        "policies": [
            {"id": 1, "version": 0, "parent_id": None, "artifact_path": "policies/v0", "status": "retired",
             "deployed": False, "metrics": {}, "base": "SmolLM2-135M-Instruct", "training_run_id": None,
             "error": None, "created_at": at(0), "deployed_at": at(0)},
            {"id": 2, "version": 1, "parent_id": 1, "artifact_path": "policies/v1", "status": "ready",
             "deployed": True, "metrics": {"win_rate": 0.625, "kl_from_prev": 0.0123, "stages": ["sft", "ppo"]},
             "base": "SmolLM2-135M-Instruct", "training_run_id": 1, "error": None, "created_at": at(60),
             "deployed_at": at(61)},
        ],
        "reward_models": [
            {"id": 1, "version": 1, "artifact_path": "reward_models/v1", "training_run_id": 1,
             "metrics": {"val_accuracy": 0.71, "bias_offset": -0.25}, "created_at": at(58)},
        ],
        "prompt_sets": [
            {"id": 1, "name": "helpfulness", "description": "Everyday questions", "guidelines": "# Rank\nBest first.",
             "k": 3, "overlap": 2, "sampling": {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 64},
             "demonstration_share": 0.25, "status": "active", "created_at": at(3), "updated_at": at(6)},
        ],
        "prompts": [
            {"id": 1, "prompt_set_id": 1, "text": "How do I boil an egg?", "messages": None, "split": "train",
             "content_hash": "e" * 64, "external_id": "q-1", "metadata": {"source": "faq"},
             "wants_demonstration": True, "is_gold": False, "gold_ranking": None, "created_at": at(3)},
            {"id": 2, "prompt_set_id": 1, "text": None,
             "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime ✓"}],
             "split": "validation", "content_hash": "f" * 64, "external_id": None, "metadata": {},
             "wants_demonstration": False, "is_gold": False, "gold_ranking": None, "created_at": at(3)},
            {"id": 3, "prompt_set_id": 1, "text": "Gold: 2+2?", "messages": None, "split": "train",
             "content_hash": "0" * 64, "external_id": None, "metadata": {}, "wants_demonstration": False,
             "is_gold": True, "gold_ranking": [[7], [8, 9]], "created_at": at(3)},
            {"id": 4, "prompt_set_id": 1, "text": "Not labeled yet", "messages": None, "split": "train",
             "content_hash": "1" * 64, "external_id": None, "metadata": {}, "wants_demonstration": False,
             "is_gold": False, "gold_ranking": None, "created_at": at(3)},
        ],
        "completions": [
            {"id": cid, "prompt_id": pid, "policy_id": pol, "text": f"answer {cid} (prompt {pid})", "seed": cid,
             "params": {"temperature": 0.8, "backend": "transformers"}, "token_count": 4 + cid,
             "finish_reason": "eos" if cid % 2 else "length", "gen_time_s": 0.05 * cid,
             "status": "retired" if pol == 1 else "ready", "created_at": at(10 + cid)}
            for cid, pid, pol in [
                (1, 1, 1), (2, 1, 1), (3, 1, 1),  # prompt 1, policy v0
                (4, 2, 2), (5, 2, 2), (6, 2, 2),  # prompt 2, policy v1
                (7, 3, 1), (8, 3, 1), (9, 3, 1),  # gold prompt 3, policy v0
                (10, 4, 2), (11, 4, 2), (12, 4, 2),  # prompt 4, policy v1 (unlabeled)
            ]
        ],
        "tasks": [
            {"id": 1, "prompt_id": 1, "prompt_set_id": 1, "labeler_id": 2, "kind": "rank", "status": "submitted",
             "completion_ids": [3, 1, 2], "lease_expires_at": at(50), "skip_reason": None, "created_at": at(20),
             "submitted_at": at(21)},
            {"id": 2, "prompt_id": 2, "prompt_set_id": 1, "labeler_id": 2, "kind": "rank", "status": "submitted",
             "completion_ids": [5, 6, 4], "lease_expires_at": at(52), "skip_reason": None, "created_at": at(22),
             "submitted_at": at(23)},
            {"id": 3, "prompt_id": 1, "prompt_set_id": 1, "labeler_id": 3, "kind": "rank", "status": "skipped",
             "completion_ids": [2, 3, 1], "lease_expires_at": at(54), "skip_reason": "cannot judge cooking",
             "created_at": at(24), "submitted_at": None},
            {"id": 4, "prompt_id": 1, "prompt_set_id": 1, "labeler_id": 3, "kind": "demonstrate",
             "status": "submitted", "completion_ids": [], "lease_expires_at": at(56), "skip_reason": None,
             "created_at": at(25), "submitted_at": at(26)},
            {"id": 5, "prompt_id": 3, "prompt_set_id": 1, "labeler_id": 3, "kind": "rank", "status": "expired",
             "completion_ids": [9, 7, 8], "lease_expires_at": at(27), "skip_reason": None, "created_at": at(26),
             "submitted_at": None},
        ],
        "rankings": [
            {"id": 1, "task_id": 1, "prompt_id": 1, "labeler_id": 2, "ranking": [[2], [1, 3]],
             "ratings": {"2": {"likert": 6, "flags": []}, "3": {"likert": 2, "flags": ["made_up_facts"]}},
             "all_unacceptable": False, "comment": "tie between 1 and 3", "time_spent_s": 41.5,
             "payload_hash": "2" * 64, "status": "active", "created_at": at(21)},
            {"id": 2, "task_id": 2, "prompt_id": 2, "labeler_id": 2, "ranking": [[6], [4], [5]], "ratings": {},
             "all_unacceptable": False, "comment": "", "time_spent_s": None, "payload_hash": "3" * 64,
             "status": "active", "created_at": at(23)},
        ],
        "demonstrations": [
            {"id": 1, "task_id": 4, "prompt_id": 1, "labeler_id": 3, "text": "Put the egg in boiling water for 8 min.",
             "time_spent_s": 90.0, "payload_hash": "4" * 64, "status": "active", "created_at": at(26)},
        ],
        "training_runs": [
            {"id": 1, "kind": "round", "status": "succeeded", "stage": "promote", "prompt_set_ids": [1],
             "stages": ["sft", "rm", "ppo"], "deploy": True, "config": {"ppo_iterations": 4},
             "worker_id": "gpu-1:4242:abcdef", "heartbeat_at": at(59), "progress": 1.0,
             "metrics": {"summary": "policy v1 from v0 (sft + ppo); deployed", "rm": {"val_accuracy": 0.71}},
             "snapshot": {"ids": {"rankings": [1, 2], "demonstrations": [1]}, "sha256": "5" * 64},
             "error": None, "attempts": 1, "cancel_requested": False, "base_policy_id": 1, "policy_id": 2,
             "created_by_id": 1, "created_at": at(30), "started_at": at(31), "finished_at": at(60)},
            {"id": 2, "kind": "round", "status": "queued", "stage": None, "prompt_set_ids": [1], "stages": ["sft"],
             "deploy": False, "config": {}, "worker_id": None, "heartbeat_at": None, "progress": 0.0,
             "metrics": {}, "snapshot": {}, "error": None, "attempts": 0, "cancel_requested": False,
             "base_policy_id": None, "policy_id": None, "created_by_id": 1, "created_at": at(70),
             "started_at": None, "finished_at": None},
        ],
        "run_logs": [
            {"id": 1, "run_id": 1, "level": "info", "message": "snapshot: 2 rankings", "created_at": at(31)},
            {"id": 2, "run_id": 1, "level": "warning", "message": "ppo_ptx_coef > 0 but …", "created_at": at(40)},
        ],
        "run_metrics": [
            {"id": 1, "run_id": 1, "stage": "sft", "step": 1, "name": "loss", "value": 2.5, "created_at": at(32)},
            {"id": 2, "run_id": 1, "stage": "ppo", "step": 4, "name": "kl", "value": 0.0123, "created_at": at(55)},
        ],
        "workers": [
            {"id": "gpu-1:4242:abcdef", "hostname": "gpu-1", "status": "idle", "policy_id": 2,
             "started_at": at(29), "last_seen_at": at(61)},
        ],
        "audit_log": [
            {"id": 1, "actor_id": 1, "action": "user.create", "target_type": "user", "target_id": "2",
             "detail": {"username": "alice", "role": "labeler"}, "created_at": at(1)},
            {"id": 2, "actor_id": 1, "action": "policy.deploy", "target_type": "policy", "target_id": "2",
             "detail": {"version": 1, "reason": "training run 1"}, "created_at": at(61)},
        ],
    }


#: Columns later revisions added, and what a row that existed before gets in them:
#: a constant, or a function of the old row (and all old rows).
NEW_COLUMNS: dict[tuple[str, str], Callable[[dict[str, Any], dict[str, list[dict[str, Any]]]], Any]] = {
    # 0002: a rank task records the policy whose completions it shows (backfilled from its
    # first completion); demonstrate tasks have none.
    ("tasks", "policy_id"): lambda row, rows: (
        next(c["policy_id"] for c in rows["completions"] if c["id"] == row["completion_ids"][0])
        if row["kind"] == "rank" and row["completion_ids"] else None
    ),
    # 0004: what each worker is running, on which device: unknown for old rows.
    ("workers", "run_id"): lambda row, rows: None,
    ("workers", "device"): lambda row, rows: None,
    # 0005: deploy past the deploy gate ("deploy": "force"): no old round asked for it.
    ("training_runs", "deploy_force"): lambda row, rows: False,
    # 0007: the round waiting on an evaluation's verdict: none for evaluations made by hand.
    ("evaluations", "training_run_id"): lambda row, rows: None,
    # 0010: every existing set holds single-turn prompts; no old task continues a conversation.
    ("prompt_sets", "kind"): lambda row, rows: "prompts",
    ("prompt_sets", "conversation"): lambda row, rows: None,
    ("tasks", "node_id"): lambda row, rows: None,
    # 0011: no old set is a red-team set, so none was promoted.
    ("prompt_sets", "red_team_promoted_at"): lambda row, rows: None,
    ("prompt_sets", "red_team_promoted_by_id"): lambda row, rows: None,
}


def _normal(value: Any) -> Any:
    """Compare values across backends: aware UTC datetimes, JSON text parsed, floats rounded."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, float):
        return round(value, 9)
    return value


def _read(engine, table: str, key: str = "id") -> dict[Any, dict[str, Any]]:  # type: ignore[no-untyped-def]
    meta = MetaData()
    t = Table(table, meta, autoload_with=engine)
    with engine.connect() as conn:
        return {r._mapping[key]: dict(r._mapping) for r in conn.execute(select(t))}


@pytest.fixture
def first_revision_url(db_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    url = db_factory.create(migrated=False)
    migrate.upgrade(url, FIRST)
    yield url
    db_factory.drop(url)


def test_upgrade_from_the_first_revision_keeps_every_row(first_revision_url: str) -> None:
    url = first_revision_url
    rows = sample_rows()
    engine = make_engine(url)
    try:
        meta = MetaData()
        meta.reflect(engine)
        assert set(rows) == set(meta.tables) - {"alembic_version"}, "fill every table of the first revision"
        old_columns = {name: set(t.columns.keys()) for name, t in meta.tables.items()}
        with engine.begin() as conn:
            for table, data in rows.items():
                conn.execute(insert(meta.tables[table]), data)
            if engine.dialect.name == "postgresql":  # explicit ids: move the sequences past them
                for table, data in rows.items():
                    if isinstance(data[0]["id"], int):
                        conn.exec_driver_sql(
                            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {max(r['id'] for r in data)})"
                        )
    finally:
        engine.dispose()

    migrate.upgrade(url)

    engine = make_engine(url)
    try:
        meta = MetaData()
        meta.reflect(engine)
        for table, data in rows.items():
            stored = _read(engine, table)
            assert sorted(stored) == sorted(r["id"] for r in data), f"{table}: rows lost or added by the upgrade"
            added = set(meta.tables[table].columns.keys()) - old_columns[table]
            unexplained = {c for c in added if (table, c) not in NEW_COLUMNS}
            assert not unexplained, (
                f"{table}.{sorted(unexplained)} added by a migration: say in NEW_COLUMNS what existing rows hold"
            )
            for row in data:
                got = stored[row["id"]]
                for column, value in row.items():
                    assert _normal(got[column]) == _normal(value), f"{table} {row['id']}.{column}: {got[column]!r}"
                for column in added:
                    expected = NEW_COLUMNS[(table, column)](row, rows)
                    assert got[column] == expected, f"{table} {row['id']}.{column}: {got[column]!r} != {expected!r}"
        # 0008: the slots table is filled from the old rows: counters per (prompt, kind,
        # policy) from the submitted / leased tasks, and the pair a claim serves now.
        slots = {
            (r["prompt_id"], r["kind"], r["policy_id"]): (bool(r["served"]), r["submitted"], r["leased"], r["taken"])
            for r in _read(engine, "slots").values()
        }
        assert slots == {
            (1, "rank", 1): (False, 1, 0, 1),  # task 1; v0's completions of prompt 1 are retired
            (2, "rank", 2): (True, 1, 0, 1),  # task 2 on the deployed v1, which has K ready
            (4, "rank", 2): (True, 0, 0, 0),  # unlabeled, K ready of the deployed policy
            (1, "demonstrate", 0): (True, 1, 0, 1),  # task 4; prompt 1 wants demonstrations
        }, slots
        totals = {(r["kind"], r["policy_id"]): (r["served"], r["open"]) for r in _read(engine, "slot_totals").values()}
        # served rows and those with a free slot (overlap 2) per policy; regular prompts 1, 2, 4
        assert totals == {("rank", 2): (2, 2), ("demonstrate", 0): (1, 1), ("prompts", 0): (3, 0)}, totals
    finally:
        engine.dispose()

    # The application works on the upgraded data.
    database = Database(url)
    try:
        with database.session() as db:
            for mapper in Base.registry.mappers:
                cls = mapper.class_
                if cls.__tablename__ in rows:
                    assert len(db.scalars(select(cls)).all()) == len(rows[cls.__tablename__]), cls.__name__
            comparisons = list(exports.comparison_records(db, exports.ExportFilter(prompt_set_id=1)))
            # ranking 1: [[2], [1, 3]] -> 2 pairs; ranking 2: [[6], [4], [5]] -> 3 pairs
            assert sorted((c["ranking_id"], c["chosen_rank"], c["rejected_rank"]) for c in comparisons) == [
                (1, 1, 2), (1, 1, 2), (2, 1, 2), (2, 1, 3), (2, 2, 3)
            ]
            assert {c["labeler"] for c in comparisons} == {"alice"}
            demos = list(exports.demonstration_records(db, exports.ExportFilter(prompt_set_id=1)))
            assert [d["completion"] for d in demos] == ["Put the egg in boiling water for 8 min."]
            # alice ranked prompts 1 and 2; the one unlabeled prompt with K ready completions
            # of the deployed policy is hers to claim now, and new ids do not collide.
            alice = db.get(User, 2)
            task = tasks.transact(
                db, lambda: tasks.next_task(db, alice, 1, "rank", lease_minutes=30, gold_rate=0.0)
            )
            assert task is not None and task.prompt_id == 4 and task.id == 6
            assert sorted(task.completion_ids) == [10, 11, 12]
    finally:
        database.dispose()

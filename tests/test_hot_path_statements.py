"""How many SQL statements one labeling cycle sends (claim = POST /tasks/next, submit =
POST /tasks/{id}/ranking), counted at the cursor on both databases. Issue 16 asks for the
fewest a claim needs; this pins the count so a change that adds a round trip to the hot
path shows up here, not only in the load benchmark. Authentication (one token lookup) and
the transaction's BEGIN/COMMIT are part of the count."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event

from tests.conftest import login
from tests.factories import ready_set

# Statements per request as of the lean hot path (docs/benchmarks.md, "Labeling at scale").
MAX_CLAIM = 8
MAX_SUBMIT = 5


@contextmanager
def counted(engine) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        seen.append(statement.split(None, 1)[0].upper() + " " + " ".join(statement.split())[:160])

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
def settings(settings):  # type: ignore[no-untyped-def]
    """No gold mixing: a gold try (gold_rate of the claims) adds one statement."""
    return settings.model_copy(update={"gold_rate": 0.0})


@pytest.fixture
def rank_set(database) -> int:  # type: ignore[no-untyped-def]
    with database.session() as db:
        ps, _, _ = ready_set(db, "hot", n_prompts=20, k=4, overlap=2)
        return ps.id


def test_a_cycle_sends_few_statements(client, database, labeler, rank_set, capsys) -> None:  # type: ignore[no-untyped-def]
    def claim() -> dict:
        r = client.post("/api/v1/tasks/next", json={"prompt_set_id": rank_set, "kind": "rank"}, headers=labeler.headers)
        assert r.status_code == 200, r.text
        return r.json()

    claim()  # warm: first claim compiles and caches the statements
    claims, submits = [], []
    for _ in range(3):
        with counted(database.engine) as seen:
            task = claim()
        claims.append(list(seen))
        ids = [c["id"] for c in task["completions"]]
        with counted(database.engine) as seen:
            r = client.post(
                f"/api/v1/tasks/{task['id']}/ranking", json={"ranking": [[i] for i in ids]}, headers=labeler.headers
            )
            assert r.status_code == 201, r.text
        submits.append(list(seen))
    with capsys.disabled():
        print(f"\n[{database.dialect}] claim {len(claims[-1])}:", *claims[-1], sep="\n  ")
        print(f"[{database.dialect}] submit {len(submits[-1])}:", *submits[-1], sep="\n  ")
    assert max(map(len, claims)) <= MAX_CLAIM, claims[-1]
    assert max(map(len, submits)) <= MAX_SUBMIT, submits[-1]


def test_pages_send_few_statements(client, database, labeler, rank_set, capsys) -> None:  # type: ignore[no-untyped-def]
    for path in ("/api/v1/me", f"/api/v1/tasks/progress?prompt_set_id={rank_set}"):
        client.get(path, headers=labeler.headers)
        with counted(database.engine) as seen:
            r = client.get(path, headers=labeler.headers)
            assert r.status_code == 200, r.text
        with capsys.disabled():
            print(f"\n[{database.dialect}] {path} {len(seen)}:", *seen, sep="\n  ")


def test_label_home_sends_few_statements(client, database, labeler, rank_set, capsys) -> None:  # type: ignore[no-untyped-def]
    login(client, labeler.username)
    client.get("/label")
    with counted(database.engine) as seen:
        r = client.get("/label")
        assert r.status_code == 200, r.text
    with capsys.disabled():
        print(f"\n[{database.dialect}] /label {len(seen)}:", *seen, sep="\n  ")

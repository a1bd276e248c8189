"""Rankings, demonstrations, skips and undo through the API: storage, idempotency, validation."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.models import FLAGS, Demonstration, Ranking, Task
from app.models.base import utcnow
from tests.factories import make_prompt_set, make_prompts, ready_set


@pytest.fixture
def rank_set(database) -> int:  # type: ignore[no-untyped-def]
    with database.session() as db:
        ps, _, _ = ready_set(db, "rank", n_prompts=4, k=4, overlap=1)
        return ps.id


@pytest.fixture
def demo_set(database) -> int:  # type: ignore[no-untyped-def]
    with database.session() as db:
        ps = make_prompt_set(db, "demo", k=4, demonstration_share=1.0)
        make_prompts(db, ps, ["Write a limerick about SQL.", "Explain TCP in one line."], wants_demonstration=True)
        return ps.id


def _task(client, account, set_id: int, kind: str = "rank") -> dict:  # type: ignore[no-untyped-def]
    r = client.post("/api/v1/tasks/next", json={"prompt_set_id": set_id, "kind": kind}, headers=account.headers)
    assert r.status_code == 200, r.text
    return r.json()


def _ids(task: dict) -> list[int]:
    return [c["id"] for c in task["completions"]]


def _post(client, account, task_id: int, what: str, body: dict):  # type: ignore[no-untyped-def]
    return client.post(f"/api/v1/tasks/{task_id}/{what}", json=body, headers=account.headers)


def test_ranking_with_ties_ratings_and_flags_is_stored_and_identical_resubmit_is_idempotent(
    client, database, labeler, rank_set
) -> None:
    task = _task(client, labeler, rank_set)
    a, b, c, d = _ids(task)
    body = {
        "ranking": [[c], [a, b], [d]],
        "ratings": {
            str(c): {"likert": 7, "flags": []},
            str(a): {"likert": 4, "flags": ["made_up_facts"]},
            str(d): {"likert": 1, "flags": ["harmful_or_toxic", "fails_instruction"]},
        },
        "all_unacceptable": False,
        "comment": "  d was rude  ",
        "time_spent_s": 42.5,
    }
    r = _post(client, labeler, task["id"], "ranking", body)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["task_id"] == task["id"] and out["prompt_id"] == task["prompt_id"]
    assert out["ranking"] == [[c], sorted([a, b]), [d]]
    assert out["ratings"][str(d)] == {"likert": 1, "flags": ["fails_instruction", "harmful_or_toxic"]}
    assert str(b) not in out["ratings"] and out["comment"] == "d was rude" and out["time_spent_s"] == 42.5
    assert out["undo_until"] > out["created_at"]
    # the same answer again (tie order and time spent may differ): 200, same body, one row
    again = {**body, "ranking": [[c], [b, a], [d]], "time_spent_s": 50.0}
    r2 = _post(client, labeler, task["id"], "ranking", again)
    assert r2.status_code == 200 and r2.json() == out
    # a different answer is a conflict
    r3 = _post(client, labeler, task["id"], "ranking", {**body, "ranking": [[a], [b], [c], [d]]})
    assert r3.status_code == 409 and "undo" in r3.json()["detail"]
    with database.session() as db:
        assert db.scalar(select(func.count(Ranking.id))) == 1
        task_row = db.get(Task, task["id"])
        assert task_row.status == "submitted" and task_row.submitted_at is not None


def test_all_unacceptable_is_kept_with_the_ranking(client, database, labeler, rank_set) -> None:
    task = _task(client, labeler, rank_set)
    body = {"ranking": [[i] for i in _ids(task)], "all_unacceptable": True, "comment": "all off-topic"}
    r = _post(client, labeler, task["id"], "ranking", body)
    assert r.status_code == 201 and r.json()["all_unacceptable"] is True
    with database.session() as db:
        row = db.scalar(select(Ranking))
        assert row.all_unacceptable is True and row.ranking == [[i] for i in _ids(task)]


@pytest.mark.parametrize(
    ("make_ranking", "expected"),
    [
        (lambda ids: [[ids[0]], [ids[1]], [ids[2]]], "leaves out completion"),
        (lambda ids: [[ids[0]], [ids[1]], [ids[2]], [ids[3]], [999999]], "999999 is not one of task"),
        (lambda ids: [[ids[0]], [ids[1], ids[0]], [ids[2]], [ids[3]]], "appears more than once"),
        (lambda ids: [[ids[0]], [], [ids[1]], [ids[2]], [ids[3]]], "group 2 is empty"),
        (lambda ids: [], "ranking is empty"),
    ],
    ids=["missing", "extra", "duplicate", "empty-group", "empty"],
)
def test_a_ranking_must_cover_exactly_the_tasks_completions(
    client, database, labeler, rank_set, make_ranking, expected
) -> None:
    task = _task(client, labeler, rank_set)
    r = _post(client, labeler, task["id"], "ranking", {"ranking": make_ranking(_ids(task))})
    assert r.status_code == 422 and expected in r.json()["detail"], r.text
    if expected.startswith("leaves out"):
        assert str(_ids(task)[3]) in r.json()["detail"]
    with database.session() as db:
        assert db.scalar(select(func.count(Ranking.id))) == 0
        assert db.get(Task, task["id"]).status == "leased"


@pytest.mark.parametrize(
    ("rating", "expected"),
    [
        ({"likert": 0}, "from 1 to 7, not 0"),
        ({"likert": 8}, "from 1 to 7, not 8"),
        ({"likert": 3, "flags": ["boring"]}, "unknown flag 'boring'"),
    ],
    ids=["likert-0", "likert-8", "unknown-flag"],
)
def test_likert_and_flags_are_validated(client, labeler, rank_set, rating, expected) -> None:
    task = _task(client, labeler, rank_set)
    ids = _ids(task)
    body = {"ranking": [[i] for i in ids], "ratings": {str(ids[1]): rating}}
    r = _post(client, labeler, task["id"], "ranking", body)
    assert r.status_code == 422 and expected in r.json()["detail"] and str(ids[1]) in r.json()["detail"]


def test_ratings_for_foreign_completions_and_malformed_bodies_are_422(client, labeler, rank_set) -> None:
    task = _task(client, labeler, rank_set)
    ranking = [[i] for i in _ids(task)]
    r = _post(client, labeler, task["id"], "ranking", {"ranking": ranking, "ratings": {"424242": {"likert": 3}}})
    assert r.status_code == 422 and "424242" in r.json()["detail"]
    r = _post(client, labeler, task["id"], "ranking", {"ranking": ranking, "ratings": {"x": {"likert": 3}}})
    assert r.status_code == 422 and "'x'" in r.json()["detail"]
    r = _post(client, labeler, task["id"], "ranking", {"ranking": ranking, "ratings": {str(ranking[0][0]): {"stars": 3}}})
    assert r.status_code == 422 and "stars" in r.json()["message"]
    r = _post(client, labeler, task["id"], "ranking", {"ranking": "best first"})
    assert r.status_code == 422 and "ranking" in r.json()["message"]
    r = _post(client, labeler, task["id"], "ranking", {"ranking": ranking, "time_spent_s": -3})
    assert r.status_code == 422 and "time_spent_s" in r.json()["detail"]
    r = _post(client, labeler, task["id"], "ranking", {"ranking": ranking, "comment": "x" * 5001})
    assert r.status_code == 422 and "comment is too long" in r.json()["detail"]
    assert "fails_instruction" in FLAGS


def test_wrong_kind_missing_and_foreign_tasks(client, labeler, make_account, rank_set, demo_set) -> None:
    rank_task = _task(client, labeler, rank_set)
    demo_task = _task(client, labeler, demo_set, "demonstrate")
    r = _post(client, labeler, demo_task["id"], "ranking", {"ranking": [[1]]})
    assert r.status_code == 422 and "demonstrate task" in r.json()["detail"]
    r = _post(client, labeler, rank_task["id"], "demonstration", {"text": "hello"})
    assert r.status_code == 422 and "rank task" in r.json()["detail"]
    r = _post(client, labeler, 987654, "ranking", {"ranking": [[1]]})
    assert r.status_code == 404 and "987654" in r.json()["detail"]
    other = make_account()
    body = {"ranking": [[i] for i in _ids(rank_task)]}
    r = _post(client, other, rank_task["id"], "ranking", body)
    assert r.status_code == 403 and "another labeler" in r.json()["detail"]
    r = _post(client, other, demo_task["id"], "demonstration", {"text": "mine now"})
    assert r.status_code == 403
    assert client.get(f"/api/v1/tasks/{rank_task['id']}", headers=other.headers).status_code == 403


def test_expired_lease_taken_by_another_labeler_is_409(client, database, make_account) -> None:
    with database.session() as db:
        ps, _, _ = ready_set(db, "taken", n_prompts=1, k=2)
        set_id = ps.id
    a, b = make_account(), make_account()
    ta = _task(client, a, set_id)
    with database.session() as db:
        db.execute(update(Task).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    tb = _task(client, b, set_id)
    assert tb["prompt_id"] == ta["prompt_id"]
    r = _post(client, a, ta["id"], "ranking", {"ranking": [[i] for i in _ids(ta)]})
    assert r.status_code == 409 and "another labeler has taken its slot" in r.json()["detail"]
    assert "expired" in r.json()["detail"] and "new task" in r.json()["detail"]


def test_demonstration_submit_validation_and_idempotency(client, database, labeler, settings, demo_set) -> None:
    settings.max_demonstration_chars = 50
    task = _task(client, labeler, demo_set, "demonstrate")
    r = _post(client, labeler, task["id"], "demonstration", {"text": "   \n "})
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    r = _post(client, labeler, task["id"], "demonstration", {"text": "y" * 51})
    assert r.status_code == 422 and "too long (51 characters; at most 50)" in r.json()["detail"]
    r = _post(client, labeler, task["id"], "demonstration", {})
    assert r.status_code == 422 and "text" in r.json()["message"]
    r = _post(client, labeler, task["id"], "demonstration", {"text": "SELECT joy\r\nFROM life;\n", "time_spent_s": 9})
    assert r.status_code == 201
    out = r.json()
    assert out["text"] == "SELECT joy\nFROM life;" and out["task_id"] == task["id"]
    r2 = _post(client, labeler, task["id"], "demonstration", {"text": "SELECT joy\nFROM life;"})
    assert r2.status_code == 200 and r2.json() == out
    r3 = _post(client, labeler, task["id"], "demonstration", {"text": "Something else"})
    assert r3.status_code == 409
    with database.session() as db:
        assert db.scalar(select(func.count(Demonstration.id))) == 1


def test_undo_takes_back_the_last_submission_and_it_can_be_redone(client, database, labeler, rank_set) -> None:
    t1 = _task(client, labeler, rank_set)
    ids = _ids(t1)
    first = {"ranking": [[i] for i in ids], "ratings": {str(ids[0]): {"likert": 5, "flags": []}}, "comment": "hm"}
    assert _post(client, labeler, t1["id"], "ranking", first).status_code == 201
    r = client.post(f"/api/v1/tasks/{t1['id']}/undo", headers=labeler.headers)
    assert r.status_code == 200, r.text
    undone = r.json()
    assert undone["id"] == t1["id"] and undone["status"] == "leased"
    assert undone["completions"] == t1["completions"]
    assert undone["previous"]["ranking"] == first["ranking"] and undone["previous"]["comment"] == "hm"
    with database.session() as db:
        assert db.scalar(select(func.count(Ranking.id))) == 0
    # asking for work returns the task being redone
    assert _task(client, labeler, rank_set)["id"] == t1["id"]
    redo = {"ranking": [[ids[3]], [ids[0], ids[1], ids[2]]]}
    r = _post(client, labeler, t1["id"], "ranking", redo)
    assert r.status_code == 201 and r.json()["ranking"][0] == [ids[3]]
    # nothing to undo twice in a row after the second undo
    assert client.post(f"/api/v1/tasks/{t1['id']}/undo", headers=labeler.headers).status_code == 200
    r = client.post(f"/api/v1/tasks/{t1['id']}/undo", headers=labeler.headers)
    assert r.status_code == 409 and "no submission to undo" in r.json()["detail"]


def test_undo_only_the_last_one_within_the_window_and_only_ones_own(
    client, database, labeler, make_account, settings, rank_set
) -> None:
    t1 = _task(client, labeler, rank_set)
    assert _post(client, labeler, t1["id"], "ranking", {"ranking": [_ids(t1)]}).status_code == 201
    t2 = _task(client, labeler, rank_set)
    assert _post(client, labeler, t2["id"], "ranking", {"ranking": [_ids(t2)]}).status_code == 201
    r = client.post(f"/api/v1/tasks/{t1['id']}/undo", headers=labeler.headers)
    assert r.status_code == 409 and "only your last submission" in r.json()["detail"]
    other = make_account()
    assert client.post(f"/api/v1/tasks/{t2['id']}/undo", headers=other.headers).status_code == 403
    with database.session() as db:
        for task_id, ago in ((t1["id"], 120), (t2["id"], 1)):
            db.execute(
                update(Task)
                .where(Task.id == task_id)
                .values(submitted_at=utcnow() - timedelta(minutes=settings.undo_window_minutes, seconds=ago))
            )
    r = client.post(f"/api/v1/tasks/{t2['id']}/undo", headers=labeler.headers)
    assert r.status_code == 409 and "undo window" in r.json()["detail"]
    settings.undo_window_minutes = 30
    assert client.post(f"/api/v1/tasks/{t2['id']}/undo", headers=labeler.headers).status_code == 200


def test_undo_a_demonstration(client, database, labeler, demo_set) -> None:
    task = _task(client, labeler, demo_set, "demonstrate")
    assert _post(client, labeler, task["id"], "demonstration", {"text": "first try"}).status_code == 201
    r = client.post(f"/api/v1/tasks/{task['id']}/undo", headers=labeler.headers)
    assert r.status_code == 200 and r.json()["previous"]["text"] == "first try"
    r = _post(client, labeler, task["id"], "demonstration", {"text": "second, better try"})
    assert r.status_code == 201
    with database.session() as db:
        assert db.scalars(select(Demonstration.text)).all() == ["second, better try"]

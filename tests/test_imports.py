"""Prompt imports: JSONL and CSV through the API and the CLI, all-or-nothing validation with
line numbers, duplicates, the size limit and the deterministic split."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sqlalchemy import func, select

from app.models import AuditLog, Prompt
from app.services.prompt_sets import content_hash, split_for, wants_demonstration
from tests.factories import make_prompt_set


def _set(client, admin, name: str = "imports", **kw) -> int:
    r = client.post("/api/v1/prompt-sets", json={"name": name, "k": 4, "overlap": 1, **kw}, headers=admin.headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _upload(client, admin, set_id: int, name: str, data: bytes, ctype: str = "application/octet-stream"):
    return client.post(
        f"/api/v1/prompt-sets/{set_id}/prompts", files={"file": (name, data, ctype)}, headers=admin.headers
    )


def _prompts(database, set_id: int) -> list[Prompt]:
    with database.session() as db:
        return list(db.scalars(select(Prompt).where(Prompt.prompt_set_id == set_id).order_by(Prompt.id)))


def test_jsonl_upload_happy_path_with_chat_ids_splits_and_metadata(client, admin, database) -> None:
    set_id = _set(client, admin)
    lines = [
        {"prompt": "Write a haiku about rain.", "id": "p-1", "split": "validation", "metadata": {"topic": "poetry"}},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]},
        {"prompt": "Explain photosynthesis.", "source": "wiki"},
    ]
    data = ("\n".join(json.dumps(x) for x in lines) + "\n\n").encode()
    r = _upload(client, admin, set_id, "prompts.jsonl", data)
    assert r.status_code == 200, r.text
    assert r.json() == {"imported": 3, "duplicates": 0}
    rows = _prompts(database, set_id)
    assert [p.display_text for p in rows] == ["Write a haiku about rain.", "What is 2+2?", "Explain photosynthesis."]
    first, chat, third = rows
    assert first.external_id == "p-1" and first.split == "validation" and first.meta == {"topic": "poetry"}
    assert chat.text is None and chat.messages[0] == {"role": "system", "content": "Be brief."}
    assert chat.content_hash == content_hash(None, lines[1]["messages"])
    assert chat.split == split_for(chat.content_hash, 0.1)
    assert third.meta == {"source": "wiki"}  # unknown keys are kept, not dropped
    with database.session() as db:
        entry = db.scalar(select(AuditLog).where(AuditLog.action == "prompts.import"))
        assert entry.actor_id == admin.id and entry.detail["imported"] == 3


def test_csv_upload_happy_path_extra_columns_become_metadata(client, admin, database) -> None:
    set_id = _set(client, admin)
    data = (
        "\ufeffprompt,id,split,category\r\n"
        '"Summarise this, please: ""quoted"" text",a1,train,summary\r\n'
        '"A prompt\nover two lines",a2,,qa\r\n'
        "Translate 'bonjour',a3,validation,\r\n"
    ).encode()
    r = _upload(client, admin, set_id, "prompts.csv", data, "text/csv")
    assert r.status_code == 200, r.text
    assert r.json() == {"imported": 3, "duplicates": 0}
    rows = _prompts(database, set_id)
    assert rows[0].text == 'Summarise this, please: "quoted" text' and rows[0].meta == {"category": "summary"}
    assert rows[1].text == "A prompt\nover two lines" and rows[1].external_id == "a2"
    assert rows[1].split == split_for(content_hash("A prompt\nover two lines"), 0.1)
    assert rows[2].split == "validation" and rows[2].meta == {}


def test_bad_json_on_line_7_is_reported_as_line_7_and_nothing_is_imported(client, admin, database) -> None:
    set_id = _set(client, admin)
    lines = [json.dumps({"prompt": f"good prompt {i}"}) for i in range(1, 11)]
    lines[6] = '{"prompt": "broken", '  # line 7
    r = _upload(client, admin, set_id, "prompts.jsonl", "\n".join(lines).encode())
    assert r.status_code == 422
    body = r.json()
    assert [e["line"] for e in body["errors"]] == [7]
    assert "invalid JSON" in body["errors"][0]["message"]
    assert body["detail"].startswith("line 7:") and "nothing was imported" in body["detail"]
    assert _prompts(database, set_id) == []


def test_every_bad_line_is_listed(client, admin, database) -> None:
    set_id = _set(client, admin)
    lines = [
        json.dumps({"prompt": "fine"}),
        json.dumps({"prompt": ""}),
        json.dumps({"prompt": "x", "split": "test"}),
        json.dumps({"prompt": "y", "messages": [{"role": "user", "content": "y"}]}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"messages": [{"role": "robot", "content": "hi"}]}),
        json.dumps({"prompt": "z", "metadata": "nope"}),
    ]
    r = _upload(client, admin, set_id, "prompts.jsonl", "\n".join(lines).encode())
    assert r.status_code == 422
    errors = {e["line"]: e["message"] for e in r.json()["errors"]}
    assert sorted(errors) == [2, 3, 4, 5, 6, 7]
    assert "empty" in errors[2] and "split" in errors[3] and "exactly one" in errors[4]
    assert "object" in errors[5] and "role" in errors[6] and "metadata" in errors[7]
    assert _prompts(database, set_id) == []


def test_csv_errors_name_the_line_and_need_a_prompt_column(client, admin, database) -> None:
    set_id = _set(client, admin)
    r = _upload(client, admin, set_id, "p.csv", b"text,id\nhello,1\n")
    assert r.status_code == 422
    assert r.json()["errors"][0]["line"] == 1 and '"prompt" column' in r.json()["errors"][0]["message"]
    # A quoted cell spanning lines 3-4 shifts the physical line numbers after it.
    data = b'prompt,split\nok one,train\n"two\nlines",train\nbad split,test\n,train\n'
    r = _upload(client, admin, set_id, "p.csv", data)
    assert r.status_code == 422
    assert [(e["line"]) for e in r.json()["errors"]] == [5, 6]
    assert _prompts(database, set_id) == []


def test_duplicates_in_the_file_and_in_the_set_are_skipped_and_counted(client, admin, database) -> None:
    set_id = _set(client, admin)
    first = "\n".join(json.dumps({"prompt": t}) for t in ["a", "b", "a"]).encode()
    assert _upload(client, admin, set_id, "1.jsonl", first).json() == {"imported": 2, "duplicates": 1}
    second = b"prompt\nb\nc\n"
    assert _upload(client, admin, set_id, "2.csv", second).json() == {"imported": 1, "duplicates": 1}
    assert sorted(p.text for p in _prompts(database, set_id)) == ["a", "b", "c"]
    # The same text in another set is not a duplicate there.
    other = _set(client, admin, "other")
    assert _upload(client, admin, other, "1.jsonl", first).json() == {"imported": 2, "duplicates": 1}


def test_json_body_import_and_item_numbers_as_lines(client, admin, database) -> None:
    set_id = _set(client, admin)
    r = client.post(
        f"/api/v1/prompt-sets/{set_id}/prompts",
        json={"prompts": [{"prompt": "one", "split": "train"}, {"prompt": "two", "id": 7}]},
        headers=admin.headers,
    )
    assert r.status_code == 200 and r.json() == {"imported": 2, "duplicates": 0}
    r = client.post(
        f"/api/v1/prompt-sets/{set_id}/prompts",
        json={"prompts": [{"prompt": "three"}, {"text": "four"}]},
        headers=admin.headers,
    )
    assert r.status_code == 422 and r.json()["errors"][0]["line"] == 2
    r = client.post(f"/api/v1/prompt-sets/{set_id}/prompts", json={"items": []}, headers=admin.headers)
    assert r.status_code == 422 and "prompts" in r.json()["detail"]
    assert [p.external_id for p in _prompts(database, set_id)] == [None, "7"]


def test_raw_jsonl_and_csv_bodies(client, admin, database) -> None:
    set_id = _set(client, admin)
    r = client.post(
        f"/api/v1/prompt-sets/{set_id}/prompts",
        content=b'{"prompt": "raw one"}\n{"prompt": "raw two"}\n',
        headers={**admin.headers, "Content-Type": "application/x-ndjson"},
    )
    assert r.json() == {"imported": 2, "duplicates": 0}
    r = client.post(
        f"/api/v1/prompt-sets/{set_id}/prompts",
        content=b"prompt\nraw three\n",
        headers={**admin.headers, "Content-Type": "text/csv"},
    )
    assert r.json() == {"imported": 1, "duplicates": 0}


def test_over_size_upload_is_413_and_imports_nothing(client, admin, database, settings) -> None:
    set_id = _set(client, admin)
    settings.max_upload_bytes = 2_000
    data = "\n".join(json.dumps({"prompt": f"prompt {i} " + "x" * 40}) for i in range(100)).encode()
    assert len(data) > 2_000
    r = _upload(client, admin, set_id, "big.jsonl", data)
    assert r.status_code == 413 and "limit is 2000 bytes" in r.json()["detail"]
    r = client.post(
        f"/api/v1/prompt-sets/{set_id}/prompts",
        content=data,
        headers={**admin.headers, "Content-Type": "application/x-ndjson"},
    )
    assert r.status_code == 413
    assert _prompts(database, set_id) == []
    small = _upload(client, admin, set_id, "small.jsonl", data[:500].rsplit(b"\n", 1)[0])
    assert small.status_code == 200


def test_split_without_given_split_is_deterministic_by_hash(client, admin, database, settings) -> None:
    settings.validation_fraction = 0.25
    set_id = _set(client, admin, demonstration_share=0.3)
    data = "\n".join(json.dumps({"prompt": f"prompt number {i}"}) for i in range(800)).encode()
    assert _upload(client, admin, set_id, "p.jsonl", data).json()["imported"] == 800
    rows = _prompts(database, set_id)
    for p in rows:
        assert p.split == split_for(p.content_hash, 0.25)
        assert p.wants_demonstration == wants_demonstration(p.content_hash, 0.3)
    share = sum(p.split == "validation" for p in rows) / len(rows)
    assert 0.2 < share < 0.3
    demos = sum(p.wants_demonstration for p in rows) / len(rows)
    assert 0.25 < demos < 0.35


def test_import_needs_an_admin(client, admin, labeler) -> None:
    set_id = _set(client, admin)
    body = {"prompts": [{"prompt": "x"}]}
    assert client.post(f"/api/v1/prompt-sets/{set_id}/prompts", json=body, headers=labeler.headers).status_code == 403
    assert client.post(f"/api/v1/prompt-sets/{set_id}/prompts", json=body).status_code == 401
    assert client.post("/api/v1/prompt-sets/9999/prompts", json=body, headers=admin.headers).status_code == 404


def _rlhf(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=120,
    )


def test_cli_import_reports_line_numbers_then_imports(db_url, database, tmp_path) -> None:
    env = {"RLHF_DATABASE_URL": db_url, "RLHF_DATA_DIR": str(tmp_path)}
    with database.session() as db:
        make_prompt_set(db, "cli-set")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([json.dumps({"prompt": "one"}), "{nope", json.dumps({"prompt": 3})]) + "\n")
    r = _rlhf(["prompts", "import", "cli-set", str(bad)], env)
    assert r.returncode == 1
    assert f"{bad}:2: invalid JSON" in r.stderr and f"{bad}:3:" in r.stderr and "nothing was imported" in r.stderr
    good = tmp_path / "good.csv"
    good.write_text("prompt,split\nfirst,train\nsecond,validation\nfirst,train\n")
    r = _rlhf(["prompts", "import", "cli-set", str(good)], env)
    assert r.returncode == 0, r.stderr
    assert "imported 2 prompt(s) into 'cli-set', skipped 1 duplicate(s)" in r.stdout
    r = _rlhf(["prompts", "import", "no-such-set", str(good)], env)
    assert r.returncode == 1 and "no prompt set named 'no-such-set'" in r.stderr
    with database.session() as db:
        assert db.scalar(select(func.count(Prompt.id))) == 2

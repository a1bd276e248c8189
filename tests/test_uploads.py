"""Hostile uploads and exports (issue 8): files that are not prompts, encodings, NUL bytes,
the size limit without a Content-Length, and CSV exports that a spreadsheet opens safely.

Every refused upload is checked to have imported nothing."""

from __future__ import annotations

import csv
import io
import json

import pytest
from sqlalchemy import func, select

from app.models import AuditLog, Completion, Prompt
from app.services import exports, imports
from tests.admin_helpers import add_demonstration, add_ranking
from tests.conftest import login
from tests.factories import make_completions, make_policy, make_prompt_set, make_prompts

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"
XLSX = b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00" + bytes(range(64))
GOOD = b'{"prompt": "fine"}\n'


def _set(client, admin) -> int:  # type: ignore[no-untyped-def]
    r = client.post("/api/v1/prompt-sets", json={"name": "uploads", "k": 2}, headers=admin.headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _count(database, set_id: int) -> int:  # type: ignore[no-untyped-def]
    with database.session() as db:
        return db.scalar(select(func.count(Prompt.id)).where(Prompt.prompt_set_id == set_id)) or 0


def _imports_audited(database) -> int:  # type: ignore[no-untyped-def]
    with database.session() as db:
        return db.scalar(select(func.count(AuditLog.id)).where(AuditLog.action == "prompts.import")) or 0


@pytest.mark.parametrize(
    "name,data,ctype,says",
    [
        ("photo.png", PNG, "image/png", "a PNG image"),
        ("prompts.jsonl", PNG, "application/octet-stream", "a PNG image"),  # renamed, caught by its bytes
        ("paper.pdf", PDF, "application/pdf", "a PDF document"),
        ("prompts.xlsx", XLSX, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "ZIP archive"),
        ("prompts.exe", GOOD, "application/octet-stream", "not a .jsonl or .csv file"),
        ("prompts", GOOD, "image/png", "content type image/png"),
    ],
)
def test_files_that_are_not_prompts_are_415_and_import_nothing(client, admin, database, name, data, ctype, says) -> None:
    set_id = _set(client, admin)
    r = client.post(f"/api/v1/prompt-sets/{set_id}/prompts", files={"file": (name, data, ctype)}, headers=admin.headers)
    assert r.status_code == 415, r.text
    assert says in r.json()["detail"] and "JSONL or CSV" in r.json()["detail"]
    assert _count(database, set_id) == 0 and _imports_audited(database) == 0


def test_raw_bodies_with_a_foreign_content_type_are_415(client, admin, database) -> None:
    set_id = _set(client, admin)
    url = f"/api/v1/prompt-sets/{set_id}/prompts"
    for body, ctype in ((PNG, "image/png"), (GOOD, "application/pdf"), (PDF, "application/x-ndjson")):
        r = client.post(url, content=body, headers={**admin.headers, "Content-Type": ctype})
        assert r.status_code == 415, (ctype, r.text)
    assert _count(database, set_id) == 0
    # The accepted spellings still work, including what Windows browsers send for .csv.
    r = client.post(url, files={"file": ("p.csv", b"prompt\nhello\n", "application/vnd.ms-excel")}, headers=admin.headers)
    assert r.json() == {"imported": 1, "duplicates": 0}
    r = client.post(url, content=b'{"prompt": "raw"}\n', headers={**admin.headers, "Content-Type": "text/plain"})
    assert r.json() == {"imported": 1, "duplicates": 0}


def test_text_that_is_not_utf8_or_holds_nul_is_422_with_the_line(client, admin, database) -> None:
    set_id = _set(client, admin)
    url = f"/api/v1/prompt-sets/{set_id}/prompts"
    latin1 = b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n'
    r = client.post(url, files={"file": ("p.jsonl", latin1, "application/json")}, headers=admin.headers)
    assert r.status_code == 422 and r.json()["errors"] == [{"line": 2, "message": "not valid UTF-8"}]
    nul = (json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"prompt": "bin\u0000ary"}) + "\n").encode()
    r = client.post(url, files={"file": ("p.jsonl", nul, "application/json")}, headers=admin.headers)
    assert r.status_code == 422 and r.json()["errors"][0]["line"] == 2 and "NUL" in r.json()["errors"][0]["message"]
    chat = {"messages": [{"role": "user", "content": "a\u0000b"}]}
    r = client.post(url, json={"prompts": [chat]}, headers=admin.headers)
    assert r.status_code == 422 and "NUL" in r.json()["detail"]
    assert _count(database, set_id) == 0


def test_size_limit_holds_without_a_content_length(client, admin, database, settings) -> None:
    """A chunked body has no Content-Length to check up front: the limit is enforced while reading."""
    set_id = _set(client, admin)
    settings.max_upload_bytes = 4_000
    line = (json.dumps({"prompt": "x" * 90}) + "\n").encode()

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(100):
            yield line

    r = client.post(
        f"/api/v1/prompt-sets/{set_id}/prompts", content=chunks(),
        headers={**admin.headers, "Content-Type": "application/x-ndjson"},
    )
    assert r.status_code == 413 and "limit is 4000 bytes" in r.json()["detail"]
    assert _count(database, set_id) == 0


def test_dashboard_upload_of_an_image_or_an_oversized_file_imports_nothing(client, admin, database, settings) -> None:
    set_id = _set(client, admin)
    csrf = login(client, admin.username)
    url = f"/admin/prompt-sets/{set_id}"
    r = client.post(url, data={"csrf_token": csrf, "action": "import"}, files={"file": ("cat.png", PNG, "image/png")})
    assert r.status_code == 415 and "cat.png is a PNG image" in r.text
    settings.max_upload_bytes = 200
    r = client.post(url, data={"csrf_token": csrf, "action": "import"}, files={"file": ("p.jsonl", GOOD * 50, "application/json")})
    assert r.status_code == 413 and ("over the limit" in r.text or "limit is 200 bytes" in r.text)
    # Without the CSRF token the upload is refused before anything is read.
    r = client.post(url, data={"action": "import"}, files={"file": ("p.jsonl", GOOD, "application/json")})
    assert r.status_code == 403
    assert _count(database, set_id) == 0 and _imports_audited(database) == 0


def test_check_upload_accepts_the_prompt_formats() -> None:
    for name, ctype in (("p.jsonl", "application/json"), ("p.csv", "text/csv"), ("p.JSONL", None),
                        ("p.ndjson", "application/x-ndjson"), ("prompts", None), (None, "text/plain")):
        imports.check_upload(name, ctype, GOOD)
    assert imports.detect_format("p.csv", "application/vnd.ms-excel", b"prompt\nx\n") == "csv"


# ---------------------------------------------------------------- CSV exports

DANGEROUS = ("=", "+", "-", "@", "\t", "\r")
FORMULAS = ['=HYPERLINK("http://evil.example","click")', "+1+1", "-2+3", "@SUM(A1:A9)", "\t=1+1", "=cmd|' /C calc'!A0"]


@pytest.fixture
def formula_data(database, make_account):  # type: ignore[no-untyped-def]
    """Every exported text field starts with a formula: prompts, completions, a demonstration
    and the labeler's username."""
    evil = make_account("labeler", "=labeler()")
    with database.session() as db:
        ps = make_prompt_set(db, "formulas", k=3)
        first, second = make_prompts(db, ps, [FORMULAS[0], FORMULAS[5]])
        policy = make_policy(db)
        make_completions(db, first, policy, 3, [FORMULAS[1], FORMULAS[2], FORMULAS[3]])
        ids = list(db.scalars(select(Completion.id).where(Completion.prompt_id == first.id).order_by(Completion.id)))
        add_ranking(db, first, evil.id, [[ids[0]], [ids[1], ids[2]]])
        add_demonstration(db, second, evil.id, FORMULAS[4])
        return ps.id


@pytest.mark.parametrize("kind", exports.KINDS)
@pytest.mark.parametrize("variant", ["", "?format=conversational"])
def test_csv_exports_neutralise_every_formula_cell(client, admin, formula_data, kind, variant) -> None:
    r = client.get(f"/api/v1/exports/{kind}.csv{variant}", headers=admin.headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == exports.COLUMNS[kind] and len(rows) > 1
    cells = [cell for row in rows[1:] for cell in row]
    assert not [c for c in cells if c.startswith(DANGEROUS)], "a CSV cell a spreadsheet would run as a formula"
    # Neutralised, not lost: the text is there behind the quote.
    assert "'=labeler()" in cells
    if not variant:
        texts = {c[1:] for c in cells if c.startswith("'")}
        expected = {"comparisons": FORMULAS[:4], "rankings": FORMULAS[:1], "demonstrations": [FORMULAS[5], FORMULAS[4]]}
        assert set(expected[kind]) <= texts, texts

"""Prompt import from JSONL, CSV or a list of objects: validate everything first, then insert.

JSONL lines are ``{"prompt": "..."}`` or ``{"messages": [{"role", "content"}, ...]}`` with
optional ``id``, ``split`` ("train"/"validation") and ``metadata`` (an object); any other
key is kept in the metadata. CSV needs a ``prompt`` column; ``id``, ``split`` and
``metadata`` (a JSON object) columns are optional and any other column goes to metadata.

The whole input is checked before anything is written: when any line is bad the import
raises :class:`ImportFailed` listing every bad line (1-based physical line numbers; for
a JSON list, the item's position), and nothing is imported. A prompt whose content hash
is already in the set, or earlier in the same file, is skipped and counted as a duplicate.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.models import SPLITS, Prompt, PromptSet, User
from app.services import audit, conversations
from app.services.errors import Conflict, Invalid, TooLarge, Unsupported
from app.services.prompt_sets import content_hash, split_for, wants_demonstration

ROLES = ("system", "user", "assistant")
MAX_PROMPT_CHARS = 100_000
MAX_ERRORS = 100
INSERT_BATCH = 500
KNOWN = {"prompt", "messages", "id", "split", "metadata"}

Progress = Callable[[int], None]


@dataclass
class LineError:
    line: int
    message: str


class ImportFailed(Invalid):
    """Some lines are bad; nothing was imported. ``errors`` lists them with line numbers."""

    def __init__(self, errors: list[LineError], total_bad: int | None = None) -> None:
        bad = total_bad if total_bad is not None else len(errors)
        first = errors[0]
        more = f" (and {bad - 1} more bad line{'s' if bad > 2 else ''})" if bad > 1 else ""
        super().__init__(f"line {first.line}: {first.message}{more}; nothing was imported")
        self.errors = errors
        self.total_bad = bad


@dataclass
class PromptRow:
    """One validated prompt, before it is written."""

    line: int
    text: str | None
    messages: list[dict[str, str]] | None
    external_id: str | None
    split: str | None
    metadata: dict[str, Any]
    content_hash: str = field(init=False)

    def __post_init__(self) -> None:
        self.content_hash = content_hash(self.text, self.messages)


@dataclass
class ImportResult:
    imported: int
    duplicates: int
    total: int


def check_size(size: int | None, limit: int) -> None:
    """Raise TooLarge (413) when an upload is over ``limit`` bytes."""
    if size is not None and size > limit:
        raise TooLarge(f"upload is {size} bytes; the limit is {limit} bytes (RLHF_MAX_UPLOAD_BYTES)")


def _validate_item(item: Any, line: int) -> PromptRow:
    """Check one decoded object; raises Invalid with a message naming the problem."""
    if not isinstance(item, dict):
        raise Invalid(f"expected a JSON object, got {type(item).__name__}")
    has_prompt = item.get("prompt") is not None
    has_messages = item.get("messages") is not None
    if has_prompt == has_messages:
        raise Invalid('give exactly one of "prompt" (a string) or "messages" (a list)')
    text: str | None = None
    messages: list[dict[str, str]] | None = None
    if has_prompt:
        text = item["prompt"]
        if not isinstance(text, str):
            raise Invalid('"prompt" must be a string')
        if not text.strip():
            raise Invalid('"prompt" is empty')
        if len(text) > MAX_PROMPT_CHARS:
            raise Invalid(f'"prompt" is longer than {MAX_PROMPT_CHARS} characters')
        if "\x00" in text:
            raise Invalid('"prompt" contains a NUL character (binary data?)')
    else:
        raw = item["messages"]
        if not isinstance(raw, list) or not raw:
            raise Invalid('"messages" must be a non-empty list of {"role", "content"} objects')
        messages = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise Invalid(f'messages[{i}] must be an object with string "role" and "content"')
            if "\x00" in m["content"]:
                raise Invalid(f"messages[{i}].content contains a NUL character (binary data?)")
            if m["role"] not in ROLES:
                raise Invalid(f"messages[{i}].role must be one of {', '.join(ROLES)}, not {m['role']!r}")
            messages.append({"role": m["role"], "content": m["content"]})
        if not any(m["role"] == "user" and m["content"].strip() for m in messages):
            raise Invalid('"messages" needs a non-empty user turn')
        if sum(len(m["content"]) for m in messages) > MAX_PROMPT_CHARS:
            raise Invalid(f'"messages" are longer than {MAX_PROMPT_CHARS} characters')
    external_id = item.get("id")
    if external_id is not None:
        if isinstance(external_id, bool) or not isinstance(external_id, (str, int)):
            raise Invalid('"id" must be a string or an integer')
        external_id = str(external_id)
        if len(external_id) > 255:
            raise Invalid('"id" is longer than 255 characters')
    split = item.get("split")
    if split is not None and split not in SPLITS:
        raise Invalid(f'"split" must be "train" or "validation", not {split!r}')
    metadata = item.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise Invalid('"metadata" must be an object')
    extra = {k: v for k, v in item.items() if k not in KNOWN}
    return PromptRow(
        line=line, text=text, messages=messages, external_id=external_id or None, split=split,
        metadata={**extra, **metadata},
    )


def _collect(items: Iterable[tuple[int, Any]]) -> list[PromptRow]:
    """Validate every (line, item); raise ImportFailed with all bad lines (the first 100 listed)."""
    rows: list[PromptRow] = []
    errors: list[LineError] = []
    bad = 0
    for line, item in items:
        if isinstance(item, LineError):
            bad += 1
            if len(errors) < MAX_ERRORS:
                errors.append(item)
            continue
        try:
            rows.append(_validate_item(item, line))
        except Invalid as exc:
            bad += 1
            if len(errors) < MAX_ERRORS:
                errors.append(LineError(line, exc.message))
    if errors:
        raise ImportFailed(errors, bad)
    if not rows:
        raise Invalid("the file has no prompts")
    return rows


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ImportFailed([LineError(line, "not valid UTF-8")]) from exc


def _jsonl_items(text: str) -> Iterator[tuple[int, Any]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw)
        except json.JSONDecodeError as exc:
            yield number, LineError(number, f"invalid JSON: {exc.msg} (column {exc.colno})")


def parse_jsonl(data: bytes) -> list[PromptRow]:
    return _collect(_jsonl_items(_decode(data)))


def _csv_items(text: str) -> Iterator[tuple[int, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        yield 1, LineError(1, f"bad CSV header: {exc}")
        return
    names = [h.strip() for h in header]
    if "prompt" not in names:
        yield 1, LineError(1, f'the CSV header needs a "prompt" column (found: {", ".join(names) or "nothing"})')
        return
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, LineError(start, f"bad CSV: {exc}")
            return
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(names):
            yield start, LineError(start, f"expected {len(names)} cells, found {len(cells)}")
            continue
        row = dict(zip(names, cells, strict=True))
        item: dict[str, Any] = {"prompt": row.pop("prompt")}
        for key in ("id", "split"):
            value = row.pop(key, "")
            if value != "":
                item[key] = value
        meta_raw = row.pop("metadata", "")
        metadata: Any = {}
        if meta_raw.strip():
            try:
                metadata = json.loads(meta_raw)
            except json.JSONDecodeError as exc:
                yield start, LineError(start, f"the metadata cell is not valid JSON: {exc.msg}")
                continue
        if isinstance(metadata, dict):
            metadata = {**{k: v for k, v in row.items() if v != ""}, **metadata}
        item["metadata"] = metadata
        yield start, item


def parse_csv(data: bytes) -> list[PromptRow]:
    return _collect(_csv_items(_decode(data)))


def parse_items(items: list[Any]) -> list[PromptRow]:
    """A JSON list of prompt objects; 'line' is the 1-based position in the list."""
    return _collect(enumerate(items, start=1))


#: File names an import takes (anything else with an extension is refused).
TEXT_EXTENSIONS = (".jsonl", ".json", ".ndjson", ".csv", ".txt")
#: Content types an import takes when the name does not settle it (browsers send
#: application/vnd.ms-excel for .csv on Windows, octet-stream when they do not know).
TEXT_TYPES = (
    "text/", "application/json", "application/x-ndjson", "application/jsonl", "application/x-jsonlines",
    "application/jsonlines", "application/octet-stream", "application/vnd.ms-excel",
)
#: Leading bytes of common binary files, named in the error message.
MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a ZIP archive (xlsx, docx, ...)",
    b"\xd0\xcf\x11\xe0": "an Office document (xls, doc)",
    b"\x1f\x8b": "gzip-compressed data",
    b"\x7fELF": "an executable",
}
UPLOAD_HINT = "upload prompts as JSONL or CSV (UTF-8 text)"


def check_upload(filename: str | None, content_type: str | None, data: bytes) -> None:
    """Refuse (415) what is plainly not a prompt file: a binary file by its first bytes, a
    file name with another extension, or a non-text content type."""
    for magic, kind in MAGIC.items():
        if data.startswith(magic):
            raise Unsupported(f"{filename or 'the upload'} is {kind}; {UPLOAD_HINT}")
    name = (filename or "").lower()
    base = name.rsplit("/", 1)[-1]
    if "." in base.lstrip(".") and not base.endswith(TEXT_EXTENSIONS):
        raise Unsupported(f"{filename} is not a .jsonl or .csv file; {UPLOAD_HINT}")
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype and not base.endswith(TEXT_EXTENSIONS) and not ctype.startswith(TEXT_TYPES):
        raise Unsupported(f"content type {ctype} is not a prompt file; {UPLOAD_HINT}")


def detect_format(filename: str | None, content_type: str | None, data: bytes) -> str:
    """'csv' or 'jsonl' from the file name, else the content type, else the first character.
    Raises Unsupported (415) for what is not a prompt file at all (see :func:`check_upload`)."""
    check_upload(filename, content_type, data)
    name = (filename or "").lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if content_type and "csv" in content_type:
        return "csv"
    head = data.lstrip()[:1]
    return "jsonl" if head in (b"{", b"") else "csv"


def parse_file(data: bytes, fmt: str) -> list[PromptRow]:
    if fmt == "csv":
        return parse_csv(data)
    if fmt == "jsonl":
        return parse_jsonl(data)
    raise Invalid(f"unknown format {fmt!r}; use jsonl or csv")


def import_rows(
    db: Session,
    prompt_set: PromptSet,
    rows: list[PromptRow],
    *,
    validation_fraction: float,
    actor: User | None = None,
    source: str = "api",
    progress: Progress | None = None,
) -> ImportResult:
    """Insert validated rows, skipping hashes already in the set or seen earlier in ``rows``.

    Flushes but does not commit. ``progress(n)`` is called as rows are handled. In a
    conversation set every row is a seed (an opening user message,
    :func:`app.services.conversations.seed_problem`) and becomes the root of a tree.
    """
    is_conversation = conversations.is_conversation(prompt_set)
    if is_conversation:
        bad = [
            LineError(r.line, why)
            for r in rows
            if (why := conversations.seed_problem(prompt_set, r.text, r.messages)) is not None
        ]
        if bad:
            raise ImportFailed(bad[:MAX_ERRORS], len(bad))
    duplicates = 0
    seen: set[str] = set()
    fresh: list[PromptRow] = []
    for start in range(0, len(rows), INSERT_BATCH):
        chunk = rows[start : start + INSERT_BATCH]
        existing = set(
            db.scalars(
                select(Prompt.content_hash).where(
                    Prompt.prompt_set_id == prompt_set.id,
                    Prompt.content_hash.in_([r.content_hash for r in chunk]),
                )
            )
        )
        for row in chunk:
            if row.content_hash in existing or row.content_hash in seen:
                duplicates += 1
            else:
                seen.add(row.content_hash)
                fresh.append(row)
    imported = 0
    try:
        for start in range(0, len(fresh), INSERT_BATCH):
            chunk = fresh[start : start + INSERT_BATCH]
            db.execute(
                insert(Prompt),
                [
                    {
                        "prompt_set_id": prompt_set.id,
                        "text": r.text,
                        "messages": r.messages,
                        "split": r.split or split_for(r.content_hash, validation_fraction),
                        "content_hash": r.content_hash,
                        "external_id": r.external_id,
                        "meta": r.metadata,
                        "wants_demonstration": wants_demonstration(
                            r.content_hash, prompt_set.demonstration_share
                        ),
                        "is_gold": False,
                    }
                    for r in chunk
                ],
            )
            imported += len(chunk)
            if progress:
                progress(imported)
    except IntegrityError as exc:
        raise Conflict("another import added some of these prompts at the same time; retry") from exc
    if is_conversation:
        conversations.add_seeds(db, prompt_set, [r.content_hash for r in fresh])
    audit.record(
        db, actor, "prompts.import", "prompt_set", prompt_set.id,
        imported=imported, duplicates=duplicates, source=source,
    )
    db.flush()
    return ImportResult(imported=imported, duplicates=duplicates, total=len(rows))

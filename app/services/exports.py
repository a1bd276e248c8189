"""Streamed exports of comparisons, rankings and demonstrations (JSONL or CSV).

Rows are read in keyset-paginated batches (``WHERE id > last ORDER BY id LIMIT n``) as
plain column tuples, so memory stays constant whatever the table size, no cursor or
transaction stays open while a slow client downloads, and SQLite and PostgreSQL behave
the same. Only ``active`` rankings and demonstrations are exported; gold prompts are left
out unless ``include_gold``.

Formats (see shared/design.md), each line one JSON object:

* comparisons: one line per ordered pair a ranking implies (K choose 2 less ties):
  ``prompt, chosen, rejected, prompt_id, ranking_id, labeler, chosen_rank, rejected_rank,
  policy, split``. Ranks are 1-based group positions; ``policy`` is the version of the
  policy that sampled the completions.
* rankings: one line per ranking: ``prompt, completions`` (texts, in completion id order),
  ``ranking`` (best-first groups of indexes into ``completions``), ``ratings`` (keyed by
  index), ``all_unacceptable, labeler, prompt_id, ranking_id, completion_ids, policy, split``.
* demonstrations: ``prompt, completion, prompt_id, demonstration_id, labeler, split``.

``conversational=True`` gives TRL's conversational form: the prompt as a list of messages
(``[{"role": "user", "content": ...}]`` or the chat prompt's own messages) and each answer
as ``[{"role": "assistant", "content": ...}]``. A conversation set's context prompt is the
whole conversation before the judged reply, so its comparisons share that context as
``prompt`` and its rankings hold the context plus K replies; its demonstrations are TRL's
conversational language-modeling rows instead: ``messages`` (the context and the written
reply), ``prompt_id, demonstration_id, labeler, split``, which SFTTrainer reads as they are
(in CSV, whose columns are fixed, they keep ``prompt`` and ``completion``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app.models import Completion, Demonstration, Policy, Prompt, PromptSet, Ranking, SubmissionStatus, User
from app.services.errors import Invalid
from app.services.rankings import ordered_pairs

KINDS = ("comparisons", "rankings", "demonstrations")
FORMATS = ("jsonl", "csv")
BATCH = 500
CHUNK_BYTES = 64 * 1024

COLUMNS: dict[str, list[str]] = {
    "comparisons": [
        "prompt", "chosen", "rejected", "prompt_id", "ranking_id", "labeler",
        "chosen_rank", "rejected_rank", "policy", "split",
    ],
    "rankings": [
        "prompt", "completions", "ranking", "ratings", "all_unacceptable", "labeler",
        "prompt_id", "ranking_id", "completion_ids", "policy", "split",
    ],
    "demonstrations": ["prompt", "completion", "prompt_id", "demonstration_id", "labeler", "split"],
}


@dataclass
class ExportFilter:
    """Which rows to export. ``since`` is inclusive, ``until`` exclusive (on created_at)."""

    prompt_set_id: int | None = None
    split: str | None = None
    policy_id: int | None = None
    labeler: str | None = None  # a username
    since: datetime | None = None
    until: datetime | None = None
    include_gold: bool = False

    def check(self) -> None:
        """Validate, and read naive datetimes as UTC (rows carry aware UTC times)."""
        if self.since is not None and self.since.tzinfo is None:
            self.since = self.since.replace(tzinfo=UTC)
        if self.until is not None and self.until.tzinfo is None:
            self.until = self.until.replace(tzinfo=UTC)
        if self.split is not None and self.split not in ("train", "validation"):
            raise Invalid(f"split must be train or validation, not {self.split!r}")
        if self.since and self.until and self.since >= self.until:
            raise Invalid("since must be before until")


def _prompt_value(text: str | None, messages: list[dict[str, str]] | None, conversational: bool) -> Any:
    if conversational:
        if messages is not None:
            return [{"role": m["role"], "content": m["content"]} for m in messages]
        return [{"role": "user", "content": text or ""}]
    if text is not None:
        return text
    for m in reversed(messages or []):
        if m.get("role") == "user":
            return m.get("content", "")
    return ""


def _answer(text: str, conversational: bool) -> Any:
    return [{"role": "assistant", "content": text}] if conversational else text


FILTER_COLUMNS = (Prompt.prompt_set_id, Prompt.is_gold, Prompt.split, User.username)


def _keep(flt: ExportFilter, row: Any) -> bool:
    """The filters, applied to a fetched row (see :func:`_batches` for why not in SQL)."""
    return (
        (flt.prompt_set_id is None or row.prompt_set_id == flt.prompt_set_id)
        and (flt.split is None or row.split == flt.split)
        and (flt.include_gold or not row.is_gold)
        and (flt.labeler is None or row.username == flt.labeler)
        and (flt.since is None or row.created_at >= flt.since)
        and (flt.until is None or row.created_at < flt.until)
    )


def _batches(
    db: Session, model: type[Ranking] | type[Demonstration], query: Select, flt: ExportFilter, batch: int
) -> Iterator[list[Any]]:
    """Keyset pagination by primary key: ``WHERE id > last AND status = 'active' ORDER BY id
    LIMIT batch`` over ``query`` (the row joined with its prompt and labeler), then the
    filters in Python. With the filters in SQL, SQLite's planner starts from the prompts of
    the set and sorts every time, which makes an export quadratic; walking the primary key
    keeps it linear on both databases and holds one batch in memory."""
    last = 0
    while True:
        rows = db.execute(
            query.where(model.id > last, model.status == SubmissionStatus.ACTIVE).order_by(model.id).limit(batch)
        ).all()
        if not rows:
            return
        last = rows[-1].id
        kept = [r for r in rows if _keep(flt, r)]
        if kept:
            yield kept
        if len(rows) < batch:
            return


def _ranking_batches(db: Session, flt: ExportFilter, batch: int) -> Iterator[tuple[list[Any], dict[int, Any]]]:
    """Batches of active rankings with their prompt and labeler, and the completions they name."""
    flt.check()
    query = (
        select(
            Ranking.id, Ranking.ranking, Ranking.ratings, Ranking.all_unacceptable, Ranking.prompt_id,
            Ranking.created_at, Prompt.text, Prompt.messages, *FILTER_COLUMNS,
        )
        .join(Prompt, Prompt.id == Ranking.prompt_id)
        .join(User, User.id == Ranking.labeler_id)
    )
    versions: dict[int, int] = {pid: v for pid, v in db.execute(select(Policy.id, Policy.version))}
    for rows in _batches(db, Ranking, query, flt, batch):
        ids = {cid for r in rows for g in (r.ranking or []) for cid in g}
        completions = {
            c.id: c
            for c in db.execute(
                select(Completion.id, Completion.text, Completion.policy_id).where(Completion.id.in_(ids))
            )
        } if ids else {}
        kept = []
        for r in rows:
            cids = [cid for g in (r.ranking or []) for cid in g]
            if len(cids) < 2 or any(cid not in completions for cid in cids):
                continue  # a ranking naming a missing completion cannot be exported faithfully
            policies = {completions[cid].policy_id for cid in cids}
            if flt.policy_id is not None and policies != {flt.policy_id}:
                continue
            kept.append((r, versions.get(policies.pop()) if len(policies) == 1 else None))
        yield kept, completions


def comparison_records(
    db: Session, flt: ExportFilter, conversational: bool = False, batch: int = BATCH
) -> Iterator[dict[str, Any]]:
    """One record per ordered pair (chosen better than rejected) of every exported ranking."""
    for rows, completions in _ranking_batches(db, flt, batch):
        for r, policy in rows:
            prompt = _prompt_value(r.text, r.messages, conversational)
            for chosen, rejected, chosen_rank, rejected_rank in ordered_pairs(r.ranking):
                yield {
                    "prompt": prompt,
                    "chosen": _answer(completions[chosen].text, conversational),
                    "rejected": _answer(completions[rejected].text, conversational),
                    "prompt_id": r.prompt_id,
                    "ranking_id": r.id,
                    "labeler": r.username,
                    "chosen_rank": chosen_rank,
                    "rejected_rank": rejected_rank,
                    "policy": policy,
                    "split": r.split,
                }


def ranking_records(
    db: Session, flt: ExportFilter, conversational: bool = False, batch: int = BATCH
) -> Iterator[dict[str, Any]]:
    """One record per ranking, K-way, with completions in id order and groups of indexes."""
    for rows, completions in _ranking_batches(db, flt, batch):
        for r, policy in rows:
            ids = sorted(cid for g in r.ranking for cid in g)
            index = {cid: i for i, cid in enumerate(ids)}
            ratings = {
                str(index[int(k)]): v
                for k, v in (r.ratings or {}).items()
                if str(k).lstrip("-").isdigit() and int(k) in index
            }
            yield {
                "prompt": _prompt_value(r.text, r.messages, conversational),
                "completions": [_answer(completions[cid].text, conversational) for cid in ids],
                "ranking": [[index[cid] for cid in g] for g in r.ranking],
                "ratings": ratings,
                "all_unacceptable": bool(r.all_unacceptable),
                "labeler": r.username,
                "prompt_id": r.prompt_id,
                "ranking_id": r.id,
                "completion_ids": ids,
                "policy": policy,
                "split": r.split,
            }


def demonstration_records(
    db: Session, flt: ExportFilter, conversational: bool = False, batch: int = BATCH, as_messages: bool = True
) -> Iterator[dict[str, Any]]:
    """One record per active demonstration. Conversational ones of a conversation set are
    ``messages`` rows when ``as_messages`` (JSONL); a CSV keeps its fixed columns, with the
    context as ``prompt`` and the reply as ``completion``."""
    flt.check()
    if flt.policy_id is not None:
        return  # demonstrations are written by people, not sampled by a policy
    query = (
        select(
            Demonstration.id, Demonstration.text.label("completion"), Demonstration.prompt_id,
            Demonstration.created_at, Prompt.text, Prompt.messages, PromptSet.kind.label("set_kind"),
            *FILTER_COLUMNS,
        )
        .join(Prompt, Prompt.id == Demonstration.prompt_id)
        .join(PromptSet, PromptSet.id == Prompt.prompt_set_id)
        .join(User, User.id == Demonstration.labeler_id)
    )
    for rows in _batches(db, Demonstration, query, flt, batch):
        for r in rows:
            if conversational and as_messages and r.set_kind == "conversation":
                yield {
                    "messages": [*_prompt_value(r.text, r.messages, True), *_answer(r.completion, True)],
                    "prompt_id": r.prompt_id,
                    "demonstration_id": r.id,
                    "labeler": r.username,
                    "split": r.split,
                }
                continue
            yield {
                "prompt": _prompt_value(r.text, r.messages, conversational),
                "completion": _answer(r.completion, conversational),
                "prompt_id": r.prompt_id,
                "demonstration_id": r.id,
                "labeler": r.username,
                "split": r.split,
            }


def records(
    db: Session, kind: str, flt: ExportFilter, conversational: bool = False, batch: int = BATCH,
    as_messages: bool = True,
) -> Iterator[dict[str, Any]]:
    """The records of one export kind (comparisons, rankings or demonstrations);
    ``as_messages``: see :func:`demonstration_records`."""
    if kind == "comparisons":
        return comparison_records(db, flt, conversational, batch)
    if kind == "rankings":
        return ranking_records(db, flt, conversational, batch)
    if kind == "demonstrations":
        return demonstration_records(db, flt, conversational, batch, as_messages)
    raise Invalid(f"unknown export {kind!r}; use one of {', '.join(KINDS)}")


# Characters JSON leaves raw in strings but that many line readers (Python's
# str.splitlines, JavaScript before ES2019) take for line breaks: written escaped, so one
# record is always one line whatever the model sampled.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def jsonl_line(row: dict[str, Any]) -> str:
    """One JSON Lines record: UTF-8 text as it is, but no character that reads as a line break."""
    return json.dumps(row, ensure_ascii=False).translate(_LINE_BREAKS) + "\n"


def to_jsonl(rows: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    """JSON Lines, UTF-8, yielded in chunks of about 64 KiB."""
    buf: list[str] = []
    size = 0
    for row in rows:
        line = jsonl_line(row)
        buf.append(line)
        size += len(line)
        if size >= CHUNK_BYTES:
            yield "".join(buf).encode("utf-8")
            buf, size = [], 0
    if buf:
        yield "".join(buf).encode("utf-8")


INJECTION_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV cell: lists and dicts as JSON; text starting with = + - @ (or tab/CR) quoted with '."""
    if isinstance(value, (list, dict)):
        value = json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and value.startswith(INJECTION_PREFIXES):
        return "'" + value
    return "" if value is None else value


def to_csv(rows: Iterable[dict[str, Any]], columns: list[str]) -> Iterator[bytes]:
    """CSV with a header row, safe to open in a spreadsheet, yielded in chunks."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([csv_cell(row.get(c)) for c in columns])
        if out.tell() >= CHUNK_BYTES:
            yield out.getvalue().encode("utf-8")
            out.seek(0)
            out.truncate()
    if out.tell():
        yield out.getvalue().encode("utf-8")


def stream(
    db: Session, kind: str, fmt: str, flt: ExportFilter, conversational: bool = False, batch: int = BATCH
) -> Iterator[bytes]:
    """The encoded export, chunk by chunk; memory is bounded by ``batch`` rows, not the total."""
    if fmt not in FORMATS:
        raise Invalid(f"unknown format {fmt!r}; use jsonl or csv")
    rows = records(db, kind, flt, conversational, batch, as_messages=fmt == "jsonl")
    return to_jsonl(rows) if fmt == "jsonl" else to_csv(rows, COLUMNS[kind])

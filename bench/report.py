"""Shared helpers for benchmarks: machine facts and replacing one section of docs/benchmarks.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO_ROOT / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nNumbers measured by the scripts in bench/; each script rewrites its own section.\n"


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{dt.date.today().isoformat()}, {os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}"


def replace_section(title: str, body: str, path: Path = BENCHMARKS_MD) -> Path:
    """Write ``## title`` with ``body``, replacing that section only; other sections stay."""
    heading = f"## {title}"
    text = path.read_text() if path.exists() else HEADER
    section = f"{heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n")
    return path


def replace_marked(path: Path, begin: str, end: str, body: str, heading: str = "") -> None:
    """Write ``body`` between the ``begin`` and ``end`` marker lines of ``path``, keeping the
    rest of the page (its hand-written discussion); without the markers the block is
    appended, under ``## heading`` when one is given."""
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + ("\n\n## " + heading if heading else "") + "\n\n" + block + "\n"
    path.write_text(text)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)

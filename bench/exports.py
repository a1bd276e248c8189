"""Export throughput and memory: a million comparison rows streamed through the export service.

Builds N rankings of K=4 (6 ordered pairs each) directly in a fresh database (SQLite by
default, or --database-url postgresql+psycopg://...), then streams the comparisons
export to /dev/null and reports rows/s and the peak Python heap (tracemalloc) and RSS.

    python bench/exports.py                      # 166,667 rankings -> 1,000,002 comparison lines
    python bench/exports.py --rankings 20000     # quick look
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from sqlalchemy import insert, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import migrate  # noqa: E402
from app.db import Database  # noqa: E402
from app.models import Completion, Policy, Prompt, PromptSet, Ranking, Task, User  # noqa: E402
from app.models.base import utcnow  # noqa: E402
from app.services import exports  # noqa: E402
from app.services.prompt_sets import content_hash  # noqa: E402

K = 4
CHUNK = 5000


def build(db: Database, n: int) -> int:
    now = utcnow()
    with db.session() as s:
        ps = PromptSet(name="bench", k=K)
        user = User(username="bench", password_hash="x", role="labeler")
        policy = Policy(version=0, artifact_path="policies/v0", deployed=True)
        s.add_all([ps, user, policy])
        s.flush()
        set_id, user_id, policy_id = ps.id, user.id, policy.id
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start)
        with db.session() as s:
            texts = [f"Benchmark prompt {i}: explain something in a few sentences." for i in range(start, start + count)]
            s.execute(insert(Prompt), [
                {"prompt_set_id": set_id, "text": t, "split": "train", "content_hash": content_hash(t), "meta": {}}
                for t in texts
            ])
            ids = list(s.scalars(select(Prompt.id).where(Prompt.prompt_set_id == set_id).order_by(Prompt.id.desc()).limit(count)))
            ids.reverse()
            s.execute(insert(Completion), [
                {"prompt_id": pid, "policy_id": policy_id, "text": f"Answer {j} to prompt {pid}: " + "words " * 30}
                for pid in ids for j in range(K)
            ])
            comps: dict[int, list[int]] = {}
            for pid, cid in s.execute(
                select(Completion.prompt_id, Completion.id).where(Completion.prompt_id.in_(ids)).order_by(Completion.id)
            ):
                comps.setdefault(pid, []).append(cid)
            s.execute(insert(Task), [
                {"prompt_id": pid, "prompt_set_id": set_id, "labeler_id": user_id, "kind": "rank",
                 "status": "submitted", "completion_ids": comps[pid], "lease_expires_at": now}
                for pid in ids
            ])
            tasks = dict(s.execute(select(Task.prompt_id, Task.id).where(Task.prompt_id.in_(ids))).all())
            s.execute(insert(Ranking), [
                {"task_id": tasks[pid], "prompt_id": pid, "labeler_id": user_id,
                 "ranking": [[c] for c in comps[pid]], "payload_hash": str(pid)}
                for pid in ids
            ])
        print(f"\r  built {start + count:,} / {n:,} rankings", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return set_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rankings", type=int, default=166_667)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        migrate.upgrade(url)
        db = Database(url)
        t0 = time.perf_counter()
        set_id = build(db, args.rankings)
        print(f"setup: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        tracemalloc.start()
        t0 = time.perf_counter()
        lines = size = 0
        with db.sessionmaker() as s, open("/dev/null", "wb") as out:
            for chunk in exports.stream(s, "comparisons", "jsonl", exports.ExportFilter(prompt_set_id=set_id)):
                out.write(chunk)
                lines += chunk.count(b"\n")
                size += len(chunk)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        backend = "sqlite" if url.startswith("sqlite") else "postgresql"
        print(
            f"{backend}: {lines:,} comparison lines ({size / 1e6:.0f} MB) in {elapsed:.1f} s "
            f"= {lines / elapsed:,.0f} lines/s; peak Python heap {peak / 1e6:.1f} MB, max RSS {rss_mb:.0f} MB"
        )
        db.dispose()


if __name__ == "__main__":
    main()

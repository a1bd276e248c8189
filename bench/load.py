"""Load: N concurrent simulated labelers against `rlhf serve` (PostgreSQL, uvicorn workers).

Each labeler loops with zero think time: POST /tasks/next, then POST /tasks/{id}/ranking.
The run is bounded in requests and seconds and talks to 127.0.0.1 only. Afterwards the
database is checked: no prompt has more than `overlap` live or submitted rank tasks, no
labeler holds a prompt twice, and every acknowledged submission is stored exactly once.

    python bench/load.py                        # 10, 50 and 200 labelers; writes docs/benchmarks.md
    python bench/load.py --levels 20 --no-docs  # quick look
    python bench/load.py --levels 50 --profile  # cProfile of one server worker, top entries

With --restart-postgres-at S the local PostgreSQL is restarted S seconds into each level
(fault injection): clients retry 503s and connection errors with the same payload, and the
checks above must still hold.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from app import migrate  # noqa: E402
from app.db import Database  # noqa: E402
from app.models import ApiToken, Completion, Policy, Prompt, PromptSet, Ranking, Task, User  # noqa: E402
from app.models.base import utcnow  # noqa: E402
from app.services.security import digest, hash_password  # noqa: E402
from bench.report import machine_line, markdown_table, replace_section  # noqa: E402

BASE_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@dataclass
class Sample:
    endpoint: str
    status: int
    seconds: float


@dataclass
class LevelResult:
    labelers: int
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    acked: dict[int, int] = field(default_factory=dict)  # task id -> times acknowledged
    checks: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return len(self.samples) / self.seconds if self.seconds else 0.0


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_database(base: str) -> str:
    name = f"rlhf_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_libpq(base), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(base).set(database=name).render_as_string(hide_password=False)


def drop_database(base: str, url: str) -> None:
    with psycopg.connect(_libpq(base), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')


def seed(url: str, labelers: int, prompts: int, k: int, overlap: int) -> tuple[int, list[str]]:
    """Admin-free seed: one prompt set with K completions per prompt, N labelers with tokens."""
    db = Database(url)
    tokens: list[str] = []
    password_hash = hash_password(uuid.uuid4().hex)  # one hash for all: seeding stays fast
    with db.session() as s:
        ps = PromptSet(name="load", k=k, overlap=overlap)
        s.add(ps)
        policy = Policy(version=0, artifact_path="policies/v0", deployed=True)
        s.add(policy)
        s.flush()
        rows = [
            Prompt(prompt_set_id=ps.id, text=f"Load prompt {i}", split="train", content_hash=digest(f"p{i}"))
            for i in range(prompts)
        ]
        s.add_all(rows)
        s.flush()
        s.add_all(
            Completion(prompt_id=p.id, policy_id=policy.id, text=f"answer {j} to {p.id}", seed=j)
            for p in rows
            for j in range(k)
        )
        for i in range(labelers):
            user = User(username=f"load{i}", password_hash=password_hash, role="labeler")
            s.add(user)
            s.flush()
            plaintext = f"rlhf_load_{uuid.uuid4().hex}"
            s.add(ApiToken(user_id=user.id, name="load", token_hash=digest(plaintext), prefix=plaintext[:12]))
            tokens.append(plaintext)
        set_id = ps.id
    db.dispose()
    return set_id, tokens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(url: str, port: int, workers: int, profile_to: Path | None) -> subprocess.Popen:
    env = {**os.environ, "RLHF_DATABASE_URL": url, "RLHF_SECRET_KEY": "bench", "RLHF_DATA_DIR": tempfile.mkdtemp()}
    cmd = [sys.executable]
    if profile_to:
        cmd += ["-m", "cProfile", "-o", str(profile_to)]
    cmd += ["-m", "app.cli", "serve", "--port", str(port), "--workers", str(workers)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO_ROOT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become healthy")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def labeler_loop(
    client: httpx.AsyncClient,
    set_id: int,
    budget: dict[str, float],
    result: LevelResult,
    rng: random.Random,
) -> None:
    """next -> rank, until 204 or the budget is spent. Retries keep the same payload."""
    deadline = budget["deadline"]

    async def call(endpoint: str, url: str, body: dict) -> httpx.Response | None:
        for attempt in range(30):
            if time.monotonic() > deadline or budget["requests"] <= 0:
                return None
            budget["requests"] -= 1
            t0 = time.perf_counter()
            try:
                r = await client.post(url, json=body)
            except httpx.TransportError:
                result.samples.append(Sample(endpoint, 599, time.perf_counter() - t0))
                await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
                continue
            result.samples.append(Sample(endpoint, r.status_code, time.perf_counter() - t0))
            if r.status_code == 503:
                await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
                continue
            return r
        return None

    while True:
        r = await call("POST /tasks/next", "/api/v1/tasks/next", {"prompt_set_id": set_id, "kind": "rank"})
        if r is None or r.status_code != 200:
            return
        task = r.json()
        ids = [c["id"] for c in task["completions"]]
        rng.shuffle(ids)
        body = {"ranking": [[i] for i in ids], "time_spent_s": 0.0}
        r = await call("POST /tasks/{id}/ranking", f"/api/v1/tasks/{task['id']}/ranking", body)
        if r is None:
            return
        if r.status_code in (200, 201):
            result.acked[task["id"]] = result.acked.get(task["id"], 0) + 1


async def drive(base_url: str, set_id: int, tokens: list[str], max_requests: int, max_seconds: float) -> LevelResult:
    result = LevelResult(labelers=len(tokens), seconds=0.0)
    budget = {"requests": float(max_requests), "deadline": time.monotonic() + max_seconds}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [
        httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {t}"}, limits=limits, timeout=60)
        for t in tokens
    ]
    t0 = time.monotonic()
    try:
        await asyncio.gather(
            *(labeler_loop(c, set_id, budget, result, random.Random(i)) for i, c in enumerate(clients))
        )
    finally:
        result.seconds = time.monotonic() - t0
        await asyncio.gather(*(c.aclose() for c in clients))
    return result


def verify(url: str, set_id: int, overlap: int, result: LevelResult) -> dict[str, int]:
    db = Database(url)
    now = utcnow()
    with db.session() as s:
        live = (Task.status == "submitted") | ((Task.status == "leased") & (Task.lease_expires_at > now))
        per_prompt = s.execute(
            select(Task.prompt_id, func.count())
            .where(Task.prompt_set_id == set_id, Task.kind == "rank", live)
            .group_by(Task.prompt_id)
        ).all()
        twice = s.execute(
            select(Task.labeler_id, Task.prompt_id, func.count())
            .where(Task.prompt_set_id == set_id, Task.status != "expired")
            .group_by(Task.labeler_id, Task.prompt_id)
            .having(func.count() > 1)
        ).all()
        stored = Counter(
            tid for (tid,) in s.execute(select(Ranking.task_id).where(Ranking.task_id.in_(list(result.acked) or [-1])))
        )
        total_rankings = s.scalar(select(func.count(Ranking.id)))
    db.dispose()
    return {
        "over_assigned_prompts": sum(1 for _, n in per_prompt if n > overlap),
        "labeler_prompt_twice": len(twice),
        "acked_missing": sum(1 for tid in result.acked if stored[tid] == 0),
        "acked_duplicated": sum(1 for tid in result.acked if stored[tid] > 1),
        "acked": len(result.acked),
        "rankings_stored": int(total_rankings or 0),
        "server_5xx": sum(1 for smp in result.samples if 500 <= smp.status < 599 and smp.status != 503),
    }


def percentiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        v = values[0] if values else float("nan")
        return v, v, v
    q = statistics.quantiles(values, n=100, method="inclusive")
    return q[49], q[94], q[98]


def restart_postgres_later(after_s: float) -> None:
    def _restart() -> None:
        time.sleep(after_s)
        version = sorted(os.listdir("/etc/postgresql"))[0]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=False)

    import threading

    threading.Thread(target=_restart, daemon=True).start()


def run_level(args: argparse.Namespace, labelers: int, profile_to: Path | None = None) -> LevelResult:
    url = create_database(args.pg_url)
    try:
        migrate.upgrade(url)
        prompts = max(200, (args.max_requests // 2) // args.overlap + labelers)
        set_id, tokens = seed(url, labelers, prompts, args.k, args.overlap)
        port = free_port()
        workers = 1 if profile_to else args.workers
        proc = start_server(url, port, workers, profile_to)
        try:
            if args.restart_postgres_at:
                restart_postgres_later(args.restart_postgres_at)
            result = asyncio.run(drive(f"http://127.0.0.1:{port}", set_id, tokens, args.max_requests, args.max_seconds))
        finally:
            stop_server(proc)
        result.checks = verify(url, set_id, args.overlap, result)
        return result
    finally:
        drop_database(args.pg_url, url)


def summarize(results: list[LevelResult]) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    overview, latency, checks = [], [], []
    for res in results:
        statuses = Counter(s.status for s in res.samples)
        overview.append(
            [str(res.labelers), str(len(res.samples)), f"{res.seconds:.1f}", f"{res.rps:.1f}",
             ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))]
        )
        by_endpoint: dict[str, list[float]] = defaultdict(list)
        for s in res.samples:
            by_endpoint[s.endpoint].append(s.seconds * 1000)
        for endpoint, values in sorted(by_endpoint.items()):
            p50, p95, p99 = percentiles(values)
            latency.append([str(res.labelers), endpoint, str(len(values)), f"{p50:.0f}", f"{p95:.0f}", f"{p99:.0f}"])
        c = res.checks
        checks.append(
            [str(res.labelers), str(c["acked"]), str(c["rankings_stored"]), str(c["acked_missing"]),
             str(c["acked_duplicated"]), str(c["over_assigned_prompts"]), str(c["labeler_prompt_twice"]),
             str(c["server_5xx"])]
        )
    return overview, latency, checks


def profile_top(path: Path, n: int = 15) -> str:
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime")
    width = stats.total_tt or 1.0
    rows = []
    for (filename, line, fn), (cc, nc, tt, ct, _callers) in sorted(
        stats.stats.items(), key=lambda kv: kv[1][2], reverse=True
    )[:n]:
        where = f"{Path(filename).name}:{line}({fn})"
        rows.append([where, str(nc), f"{tt:.2f}", f"{100 * tt / width:.1f}%", f"{ct:.2f}"])
    return markdown_table(["function", "calls", "tottime s", "share", "cumtime s"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="10,50,200", help="comma-separated labeler counts")
    parser.add_argument("--max-requests", type=int, default=3000, help="request budget per level")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time budget per level")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--overlap", type=int, default=2)
    parser.add_argument("--pg-url", default=BASE_PG, help="a PostgreSQL server database to create bench databases from")
    parser.add_argument("--restart-postgres-at", type=float, default=0.0, help="restart PostgreSQL after S seconds")
    parser.add_argument("--profile", action="store_true", help="cProfile one server worker at the first level")
    parser.add_argument("--section", default="Load", help="docs/benchmarks.md section title")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()

    levels = [int(x) for x in args.levels.split(",")]
    if args.profile:
        prof = Path(tempfile.mkdtemp()) / "server.prof"
        run_level(args, levels[0], profile_to=prof)
        print(profile_top(prof))
        return
    results = []
    for n in levels:
        print(f"--- {n} labelers", flush=True)
        res = run_level(args, n)
        results.append(res)
        print(f"{len(res.samples)} requests in {res.seconds:.1f} s = {res.rps:.1f} req/s; checks {res.checks}", flush=True)
    overview, latency, checks = summarize(results)
    text = "\n\n".join(
        [
            f"Measured {machine_line()}; server `rlhf serve --workers {args.workers}` on PostgreSQL, "
            f"load generator in the same machine (httpx, asyncio), K={args.k}, overlap={args.overlap}, "
            f"zero think time, at most {args.max_requests} requests or {args.max_seconds:.0f} s per level"
            + (f", PostgreSQL restarted {args.restart_postgres_at:.0f} s into each level" if args.restart_postgres_at else "")
            + ". Status 599 = connection error seen by the client.",
            markdown_table(["labelers", "requests", "seconds", "req/s", "statuses"], overview),
            markdown_table(["labelers", "endpoint", "n", "p50 ms", "p95 ms", "p99 ms"], latency),
            "Checks from the database afterwards:",
            markdown_table(
                ["labelers", "acknowledged", "rankings stored", "acked missing", "acked duplicated",
                 "over-assigned prompts", "labeler got prompt twice", "5xx (not 503)"],
                checks,
            ),
        ]
    )
    print(text)
    if not args.no_docs:
        replace_section(args.section, text)
    bad = [r for r in results if any(r.checks[k] for k in ("acked_missing", "acked_duplicated", "over_assigned_prompts", "labeler_prompt_twice", "server_5xx"))]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

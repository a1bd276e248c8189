"""Load: N concurrent simulated labelers against `rlhf serve` (PostgreSQL, uvicorn workers).

Each labeler loops with zero think time: POST /tasks/next, then POST /tasks/{id}/ranking.
The run is bounded in requests and seconds and talks to 127.0.0.1 only. Afterwards the
database is checked: no prompt has more than `overlap` live or submitted rank tasks, no
labeler holds a prompt twice, and every acknowledged submission is stored exactly once.

    python bench/load.py                        # sets of 2,000 and 50,000 prompts x 10, 50, 200 labelers
    python bench/load.py --compare ../main      # the same, first against another checkout (before/after)
    python bench/load.py --sizes '' --levels 20 --no-docs  # the plain load levels, quick look
    python bench/load.py --levels 50 --profile  # py-spy samples of every server worker, top entries

--profile samples the server processes (all uvicorn workers and their threads; only
samples of a thread holding the GIL, i.e. running Python, so threads waiting for the
database or for a CPU do not count) with py-spy (`pip install py-spy`) while the level
runs and prints the functions with the most samples, by self time and by inclusive time
in app/ code.
cProfile is no use here: it sees only the main thread, and FastAPI runs the (sync) route
handlers in a thread pool.

With --restart-postgres-at S the machine's PostgreSQL (pg_ctlcluster) is restarted S
seconds into each level (fault injection; it briefly interrupts everything else that uses
that server, other people's tests included). Clients retry 503s and connection errors with
the same payload, and the checks above must still hold; the 503s and their messages are
counted.

The default run ("Labeling at scale") seeds one set per size with the sampler's
completions written beforehand, runs every level on it (the labeling work reset in
between) and reports cycles/s (next + ranking), the server's and PostgreSQL's CPU per
cycle (/proc of the server processes and of the backends pg_stat_activity lists for the
bench database), p50/p95/p99 per endpoint, and a burst: every labeler opens /label and
asks for GET /tasks/progress and GET /me at the same moment. ``--compare DIR`` runs the
same first with DIR's app/ and migrations/ (e.g. a worktree at main), in the same sitting.

The section of docs/benchmarks.md is rewritten down to the line
``<!-- bench/load.py keeps what follows -->``; hand-written analysis below it stays.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
KEEP_MARKER = "<!-- bench/load.py keeps what follows -->"
CHECK_KEYS = ("acked_missing", "acked_duplicated", "over_assigned_prompts", "labeler_prompt_twice", "server_5xx")


@dataclass
class Sample:
    endpoint: str
    status: int
    seconds: float
    at: float  # seconds since the level started


@dataclass
class LevelResult:
    labelers: int
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    acked: dict[int, int] = field(default_factory=dict)  # task id -> times acknowledged
    resent: int = 0  # submissions sent again with the same payload after a failure
    details: Counter = field(default_factory=Counter)  # (status, detail) of 5xx answers
    checks: dict[str, int] = field(default_factory=dict)
    load_before: float = 0.0
    load_after: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    db_sessions: int = 0  # connections the server opened during the level
    db_active_s: float = 0.0  # time PostgreSQL backends spent executing the server's statements
    restart: dict[str, float] = field(default_factory=dict)
    profile: str = ""

    @property
    def rps(self) -> float:
        return len(self.samples) / self.seconds if self.seconds else 0.0

    def count(self, status: int) -> int:
        return sum(1 for s in self.samples if s.status == status)


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_database(base: str) -> str:
    name = f"rlhf_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_libpq(base), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(base).set(database=name).render_as_string(hide_password=False)


def drop_database(base: str, url: str) -> None:
    for _ in range(30):  # after a restart the server may still be starting
        try:
            with psycopg.connect(_libpq(base), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
            return
        except psycopg.OperationalError:
            time.sleep(1)


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


def start_server(url: str, port: int, workers: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "RLHF_DATABASE_URL": url,
        "RLHF_SECRET_KEY": "bench",
        "RLHF_DATA_DIR": tempfile.mkdtemp(prefix="rlhf-load-"),
    }
    cmd = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    log = tempfile.NamedTemporaryFile(prefix="rlhf-load-server-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)
    proc.log_path = log.name  # type: ignore[attr-defined]
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).status_code == 200:
                time.sleep(0.5 * workers)  # let every worker finish starting
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {Path(log.name).read_text()[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become healthy")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _descendants(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def db_counters(url: str) -> tuple[int, float]:
    """(sessions opened, milliseconds backends spent executing statements) of the bench
    database so far (pg_stat_database, PostgreSQL 14+; it counts backends that have
    exited too, unlike /proc). Statistics reach the view with a delay of up to a second."""
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT sessions, active_time FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return (int(row[0]), float(row[1])) if row else (0, 0.0)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of live processes (/proc/PID/stat)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


async def labeler_loop(
    client: httpx.AsyncClient,
    set_id: int,
    budget: dict[str, float],
    result: LevelResult,
    rng: random.Random,
    t0: float,
) -> None:
    """next -> rank, until 204 or the budget is spent. Retries keep the same payload."""
    deadline = budget["deadline"]

    async def call(endpoint: str, url: str, body: dict) -> httpx.Response | None:
        for attempt in range(30):
            if time.monotonic() > deadline or budget["requests"] <= 0:
                return None
            budget["requests"] -= 1
            if attempt and "ranking" in endpoint:
                result.resent += 1
            start = time.perf_counter()
            try:
                r = await client.post(url, json=body)
            except httpx.TransportError:
                result.samples.append(Sample(endpoint, 599, time.perf_counter() - start, start - t0))
                await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
                continue
            result.samples.append(Sample(endpoint, r.status_code, time.perf_counter() - start, start - t0))
            if r.status_code >= 500:
                try:
                    detail = str(r.json().get("detail"))
                except ValueError:
                    detail = r.text[:80]
                result.details[(r.status_code, detail)] += 1
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


async def run_labelers(
    clients: list[httpx.AsyncClient], loop: Any, max_requests: int, max_seconds: float, result: LevelResult
) -> LevelResult:
    """Run ``loop(client, budget, result, rng, t0)`` for every client at once, within a shared
    budget of requests and seconds (counted from here, after the set-up), then close them."""
    budget = {"requests": float(max_requests), "deadline": time.monotonic() + max_seconds}
    t0 = time.monotonic()
    perf0 = time.perf_counter()
    try:
        await asyncio.gather(*(loop(c, budget, result, random.Random(i), perf0) for i, c in enumerate(clients)))
    finally:
        result.seconds = time.monotonic() - t0
        await asyncio.gather(*(c.aclose() for c in clients))
    return result


async def drive(base_url: str, set_id: int, tokens: list[str], max_requests: int, max_seconds: float) -> LevelResult:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [  # plain HTTP to 127.0.0.1: verify=False spares loading the CA bundle 200 times
        httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {t}"}, limits=limits, timeout=60, verify=False
        )
        for t in tokens
    ]

    async def loop(client: httpx.AsyncClient, budget: dict[str, float], result: LevelResult, rng: random.Random,
                   perf0: float) -> None:
        await labeler_loop(client, set_id, budget, result, rng, perf0)

    return await run_labelers(clients, loop, max_requests, max_seconds, LevelResult(labelers=len(tokens), seconds=0.0))


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
        submitted = s.scalar(select(func.count(Task.id)).where(Task.status == "submitted"))
    db.dispose()
    return {
        "over_assigned_prompts": sum(1 for _, n in per_prompt if n > overlap),
        "labeler_prompt_twice": len(twice),
        "acked_missing": sum(1 for tid in result.acked if stored[tid] == 0),
        "acked_duplicated": sum(1 for tid in result.acked if stored[tid] > 1),
        "acked": len(result.acked),
        "rankings_stored": int(total_rankings or 0),
        "tasks_submitted": int(submitted or 0),
        "server_503": result.count(503),
        "server_5xx": sum(1 for smp in result.samples if 500 <= smp.status < 599 and smp.status != 503),
    }


def percentiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        v = values[0] if values else float("nan")
        return v, v, v
    q = statistics.quantiles(values, n=100, method="inclusive")
    return q[49], q[94], q[98]


def _pg_ready() -> bool:
    try:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=1):
            return True
    except psycopg.OperationalError:
        return False


def restart_postgres_later(after_s: float, t0: float, record: dict[str, float]) -> threading.Thread:
    """Restart the machine's PostgreSQL cluster ``after_s`` seconds from now (a thread).

    Records (seconds since ``t0``, a perf_counter value) when ``pg_ctlcluster restart``
    began and returned, and, from a probe that connects every 50 ms, when PostgreSQL first
    refused a connection and when it accepted one again.
    """

    def _restart() -> None:
        time.sleep(after_s)
        version = sorted(os.listdir("/etc/postgresql"))[0]
        done = threading.Event()

        def _probe() -> None:
            while not done.is_set() or "down_at" in record and "up_at" not in record:
                ok = _pg_ready()
                now = time.perf_counter() - t0
                if not ok and "down_at" not in record:
                    record["down_at"] = now
                elif ok and "down_at" in record and "up_at" not in record:
                    record["up_at"] = now
                time.sleep(0.05)

        probe = threading.Thread(target=_probe, daemon=True)
        probe.start()
        record["restart_at"] = time.perf_counter() - t0
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],  # fast mode
            check=False,
            capture_output=True,
        )
        record["restart_done_at"] = time.perf_counter() - t0
        done.set()
        probe.join(timeout=60)

    thread = threading.Thread(target=_restart, daemon=True)
    thread.start()
    return thread


# --- profiling ------------------------------------------------------------------------


def start_profiler(pid: int, out: Path) -> subprocess.Popen:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    return subprocess.Popen(
        [pyspy, "record", "--pid", str(pid), "--subprocesses", "--format", "raw", "--function",
         "--gil", "--nonblocking", "--rate", "200", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stop_profiler(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _frame_name(frame: str) -> str:
    """``fn (path/to/file.py:12)`` -> ``fn (file.py:12)``, with app/ paths kept."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, line = where.rpartition(":")
    keep = path.split("/")
    short = "/".join(keep[-2:]) if len(keep) >= 2 and keep[-2] in ("services", "routes", "api", "app", "bench") else keep[-1]
    return f"{name} ({short}:{line})" if path else name


def _package(frame: str) -> str:
    """The top-level package (or stdlib module) of a py-spy frame."""
    where = frame.rpartition(" (")[2].rstrip(")").rpartition(":")[0]
    return where.split("/")[0] if "/" in where else where.removesuffix(".py")


def profile_top(path: Path, n: int = 15) -> str:
    """Top functions of a py-spy raw profile by self samples, and app/ functions by inclusive samples."""
    self_samples: Counter = Counter()
    inclusive: Counter = Counter()
    packages: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        total += count
        self_samples[_frame_name(frames[-1])] += count
        packages[_package(frames[-1])] += count
        for frame in {_frame_name(f) for f in frames if "/app/" in f or "(app/" in f}:
            inclusive[frame] += count
    if not total:
        return "(no samples)"
    rows = [[f"`{fn}`", str(c), f"{100 * c / total:.1f}%"] for fn, c in self_samples.most_common(n)]
    app_rows = [[f"`{fn}`", str(c), f"{100 * c / total:.1f}%"] for fn, c in inclusive.most_common(n)]
    by_package = ", ".join(f"{name} {100 * c / total:.0f}%" for name, c in packages.most_common(8))
    return (
        f"{total} samples of server threads holding the GIL. Self time by package: {by_package}.\n\n"
        "By self time (the function on top of the stack):\n\n"
        + markdown_table(["function", "samples", "share"], rows)
        + "\n\napp/ code by inclusive time (the function anywhere on the stack):\n\n"
        + markdown_table(["function", "samples", "share"], app_rows)
    )


# --- a level ----------------------------------------------------------------------------


def run_level(args: argparse.Namespace, labelers: int, profile: bool = False) -> LevelResult:
    url = create_database(args.pg_url)
    try:
        migrate.upgrade(url)
        prompts = max(200, (args.max_requests // 2) // args.overlap + labelers)
        set_id, tokens = seed(url, labelers, prompts, args.k, args.overlap)
        port = free_port()
        proc = start_server(url, port, args.workers)
        server_pids = _descendants(proc.pid)
        profiler = prof_out = None
        try:
            if profile:
                prof_out = Path(tempfile.mkdtemp(prefix="rlhf-load-prof-")) / "server.txt"
                profiler = start_profiler(proc.pid, prof_out)
                time.sleep(1.0)
            load_before = os.getloadavg()[0]
            server_cpu0, client_cpu0 = cpu_seconds(server_pids), time.process_time()
            sessions0, active0 = db_counters(url)
            restart: dict[str, float] = {}
            restarter = None
            if args.restart_postgres_at:
                restarter = restart_postgres_later(args.restart_postgres_at, time.perf_counter(), restart)
            result = asyncio.run(drive(f"http://127.0.0.1:{port}", set_id, tokens, args.max_requests, args.max_seconds))
            result.server_cpu_s = cpu_seconds(server_pids) - server_cpu0
            time.sleep(1.0)  # let the backends report their statistics
            sessions1, active1 = db_counters(url)
            result.db_sessions = sessions1 - sessions0 - 1  # less the counters' own connection
            result.db_active_s = (active1 - active0) / 1000
            result.client_cpu_s = time.process_time() - client_cpu0
            result.load_before, result.load_after = load_before, os.getloadavg()[0]
            if restarter is not None:
                restarter.join(timeout=120)
                result.restart = restart
            if profiler is not None and prof_out is not None:
                stop_profiler(profiler)
                result.profile = profile_top(prof_out) if prof_out.exists() else "(py-spy wrote nothing)"
        finally:
            if profiler is not None and profiler.poll() is None:
                profiler.kill()
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
             ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
             f"{res.load_before:.1f} / {res.load_after:.1f}", f"{res.server_cpu_s:.0f}",
             f"{1000 * res.server_cpu_s / max(1, len(res.samples)):.1f}", f"{res.client_cpu_s:.0f}",
             f"{res.db_active_s:.0f}", str(res.db_sessions)]
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
             str(c["server_503"]), str(c["server_5xx"])]
        )
    return overview, latency, checks


def fault_lines(results: list[LevelResult]) -> str:
    lines = []
    for res in results:
        r = res.restart
        if not r:
            continue
        down, up = r.get("down_at", float("nan")), r.get("up_at", float("nan"))
        during = [s for s in res.samples if down <= s.at <= up]
        errors = [s for s in res.samples if s.status >= 500]
        last_error = max((s.at for s in errors), default=float("nan"))
        lines.append(
            f"{res.labelers} labelers: `pg_ctlcluster restart` ran from {r.get('restart_at', float('nan')):.1f} s to "
            f"{r.get('restart_done_at', float('nan')):.1f} s; PostgreSQL refused connections from {down:.1f} s "
            f"and accepted them again at {up:.1f} s ({up - down:.1f} s down); {len(during)} requests were sent "
            "in that window; "
            f"{res.count(503)} answers 503, {res.count(599)} connection errors, "
            f"{sum(1 for s in errors if s.status not in (503, 599))} other 5xx; "
            f"the last error answered a request sent at {last_error:.1f} s ({last_error - up:+.1f} s from "
            "PostgreSQL being back); "
            f"{res.resent} submissions re-sent with the same payload. Error answers: "
            + ("; ".join(f"{n} x {status} `{detail}`" for (status, detail), n in res.details.most_common()) or "none")
            + "."
        )
    return "\n\n".join(lines)


def write_section(title: str, text: str) -> None:
    """Replace the measured part of ``## title``; keep what follows KEEP_MARKER."""
    from bench.report import BENCHMARKS_MD

    kept = ""
    if BENCHMARKS_MD.exists():
        doc = BENCHMARKS_MD.read_text()
        start = doc.find(f"## {title}\n")
        if start >= 0:
            end = doc.find("\n## ", start + 1)
            section = doc[start : end if end >= 0 else len(doc)]
            if KEEP_MARKER in section:
                kept = section[section.index(KEEP_MARKER) + len(KEEP_MARKER) :].strip()
    replace_section(title, text + "\n\n" + KEEP_MARKER + ("\n\n" + kept if kept else ""))


# --- labeling at scale: set sizes, CPU per cycle, another checkout to compare -----------


def app_python(app_dir: Path, code: str, url: str) -> None:
    """Run ``code`` (with ``URL`` bound) in ``app_dir``'s checkout (its app/ and migrations/)."""
    subprocess.run(
        [sys.executable, "-c", f"URL = {url!r}\n{code}"], cwd=app_dir, check=True,
        env={**os.environ, "PYTHONPATH": str(app_dir)},
    )


def seed_scale(url: str, labelers: int, prompts: int, k: int, overlap: int) -> tuple[int, list[str], list[str]]:
    """One prompt set of ``prompts`` prompts with K ready completions each of the deployed
    policy (the sampler's work done beforehand), ``labelers`` labelers with a token and a
    browser session each. Core inserts, in batches: seconds for 50,000 prompts. Returns
    (set id, tokens, signed session cookies)."""
    from datetime import timedelta

    from itsdangerous import Signer
    from sqlalchemy import insert

    from app.models import UserSession

    db = Database(url)
    tokens: list[str] = []
    cookies: list[str] = []
    signer = Signer("bench", salt="rlhf-session")
    password_hash = hash_password(uuid.uuid4().hex)
    now = utcnow()
    with db.session() as s:
        # The set and the policy as Core inserts of the columns named (the others take their
        # defaults): with --compare, an older checkout's schema may lack newer columns.
        ps_id = s.scalar(insert(PromptSet).values(name="scale", k=k, overlap=overlap).returning(PromptSet.id))
        policy_id = s.scalar(
            insert(Policy).values(version=0, artifact_path="policies/v0", deployed=True).returning(Policy.id)
        )
        for start in range(0, prompts, 5000):
            s.execute(insert(Prompt), [
                {"prompt_set_id": ps_id, "text": f"Scale prompt {i}", "split": "train", "content_hash": digest(f"p{i}"),
                 "meta": {}, "wants_demonstration": False, "is_gold": False, "created_at": now}
                for i in range(start, min(prompts, start + 5000))
            ])
        ids = list(s.scalars(select(Prompt.id).where(Prompt.prompt_set_id == ps_id).order_by(Prompt.id)))
        for start in range(0, len(ids), 2500):
            s.execute(insert(Completion), [
                {"prompt_id": pid, "policy_id": policy_id, "text": f"answer {j} to {pid}", "seed": j, "params": {},
                 "token_count": 4, "finish_reason": "eos", "gen_time_s": 0.0, "status": "ready", "created_at": now}
                for pid in ids[start : start + 2500] for j in range(k)
            ])
        for i in range(labelers):
            user = User(username=f"scale{i}", password_hash=password_hash, role="labeler")
            s.add(user)
            s.flush()
            plaintext = f"rlhf_scale_{uuid.uuid4().hex}"
            s.add(ApiToken(user_id=user.id, name="load", token_hash=digest(plaintext), prefix=plaintext[:12]))
            tokens.append(plaintext)
            session_id = uuid.uuid4().hex + uuid.uuid4().hex
            s.add(UserSession(session_hash=digest(session_id), user_id=user.id, csrf_token=uuid.uuid4().hex,
                              expires_at=now + timedelta(hours=12)))
            cookies.append(signer.sign(session_id).decode())
        set_id = ps_id
    db.dispose()
    return set_id, tokens, cookies


def reset_work(url: str) -> None:
    """Forget the labeling work of the previous level (the set and its completions stay)."""
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute("DELETE FROM rankings")
        conn.execute("DELETE FROM tasks")
        conn.execute("VACUUM ANALYZE")


def backend_cpu(url: str, pids: set[int] | None = None) -> tuple[set[int], float]:
    """(pids, CPU seconds) of the PostgreSQL backends connected to the bench database (from
    pg_stat_activity and /proc), plus the ``pids`` given (backends seen at the start)."""
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        own = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        found = {
            int(r[0]) for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> %s", (own,)
            )
        }
    every = found | (pids or set())
    return every, cpu_seconds(sorted(every))


async def burst(base_url: str, set_id: int, tokens: list[str], cookies: list[str]) -> dict[str, list[Sample]]:
    """Every labeler opens their home page and asks for progress and /me at the same moment."""
    out: dict[str, list[Sample]] = defaultdict(list)
    limits = httpx.Limits(max_connections=3, max_keepalive_connections=3)
    clients = [
        httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {t}"}, limits=limits, timeout=120,
                          verify=False)
        for t in tokens
    ]
    pages = [
        httpx.AsyncClient(base_url=base_url, cookies={"rlhf_session": c}, limits=limits, timeout=120, verify=False,
                          headers={"Accept": "text/html"})
        for c in cookies
    ]
    perf0 = time.perf_counter()

    async def one(client: httpx.AsyncClient, endpoint: str, url: str) -> None:
        start = time.perf_counter()
        try:
            r = await client.get(url)
            status = r.status_code
        except httpx.TransportError:
            status = 599
        out[endpoint].append(Sample(endpoint, status, time.perf_counter() - start, start - perf0))

    try:
        jobs = []
        for c, page in zip(clients, pages, strict=True):
            jobs.append(one(page, "GET /label", "/label"))
            jobs.append(one(c, "GET /tasks/progress", f"/api/v1/tasks/progress?prompt_set_id={set_id}"))
            jobs.append(one(c, "GET /me", "/api/v1/me"))
        await asyncio.gather(*jobs)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients + pages))
    return out


def idle_latency(base_url: str, set_id: int, token: str, cookie: str, n: int = 20) -> dict[str, float]:
    """Median ms of one request at a time (server and HTTP on this machine)."""
    res: dict[str, float] = {}
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, verify=False,
                      timeout=300) as c, \
            httpx.Client(base_url=base_url, cookies={"rlhf_session": cookie}, verify=False, timeout=300) as page:
        for endpoint, client, url in (
            ("GET /tasks/progress", c, f"/api/v1/tasks/progress?prompt_set_id={set_id}"),
            ("GET /me", c, "/api/v1/me"),
            ("GET /label", page, "/label"),
        ):
            times: list[float] = []
            for _ in range(n):
                if sum(times) > 10_000:  # a slow endpoint: enough samples
                    break
                start = time.perf_counter()
                r = client.get(url)
                times.append((time.perf_counter() - start) * 1000)
                assert r.status_code == 200, (endpoint, r.status_code, r.text[:200])
            res[endpoint] = statistics.median(times)
    return res


@dataclass
class ScaleRun:
    code: str
    prompts: int
    level: LevelResult
    pg_cpu_s: float = 0.0

    @property
    def cycles(self) -> int:
        return len(self.level.acked)


def run_scale(args: argparse.Namespace, code: str, app_dir: Path) -> tuple[list[ScaleRun], list[tuple[int, dict, dict]]]:
    """Every set size and level against one checkout; returns the level runs and, per size,
    the burst samples and the idle latencies."""
    runs: list[ScaleRun] = []
    bursts: list[tuple[int, dict, dict]] = []
    levels = [int(x) for x in args.levels.split(",")]
    for size in [int(x) for x in args.sizes.split(",")]:
        url = create_database(args.pg_url)
        try:
            app_python(app_dir, "from app import migrate\nmigrate.upgrade(URL)", url)
            t_seed = time.time()
            set_id, tokens, cookies = seed_scale(url, max(levels), size, args.k, args.overlap)
            print(f"[{code}] seeded {size} prompts in {time.time() - t_seed:.0f} s", flush=True)
            with psycopg.connect(_libpq(url), autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE")
            port = free_port()
            env_dir = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = str(app_dir)
            try:
                proc = start_server_in(url, port, args.workers, app_dir)
            finally:
                if env_dir is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = env_dir
            server_pids = _descendants(proc.pid)
            try:
                idle = idle_latency(f"http://127.0.0.1:{port}", set_id, tokens[0], cookies[0])
                print(f"[{code}] {size} prompts, idle ms: {idle}", flush=True)
                if max(idle.values()) < 1000:  # else the burst would take many minutes: left out
                    samples = asyncio.run(burst(f"http://127.0.0.1:{port}", set_id, tokens, cookies))
                else:
                    samples = {}
                bursts.append((size, samples, idle))
                for n in levels:
                    reset_work(url)
                    pids0, pg0 = backend_cpu(url)
                    server0 = cpu_seconds(server_pids)
                    load0 = os.getloadavg()[0]
                    res = asyncio.run(drive(f"http://127.0.0.1:{port}", set_id, tokens[:n], args.max_requests,
                                            args.max_seconds))
                    res.server_cpu_s = cpu_seconds(server_pids) - server0
                    _, pg1 = backend_cpu(url, pids0)
                    res.load_before, res.load_after = load0, os.getloadavg()[0]
                    res.checks = verify(url, set_id, args.overlap, res)
                    run = ScaleRun(code, size, res, pg1 - pg0)
                    runs.append(run)
                    print(f"[{code}] {size} prompts, {n} labelers: {run.cycles} cycles in {res.seconds:.1f} s = "
                          f"{run.cycles / res.seconds:.1f}/s; server {1000 * res.server_cpu_s / max(1, run.cycles):.1f} "
                          f"ms/cycle, PostgreSQL {1000 * run.pg_cpu_s / max(1, run.cycles):.1f} ms/cycle; "
                          f"load {load0:.1f}; checks {res.checks}", flush=True)
            finally:
                stop_server(proc)
        finally:
            drop_database(args.pg_url, url)
    return runs, bursts


def start_server_in(url: str, port: int, workers: int, app_dir: Path) -> subprocess.Popen:
    global REPO_ROOT
    saved = REPO_ROOT
    REPO_ROOT = app_dir
    try:
        return start_server(url, port, workers)
    finally:
        REPO_ROOT = saved


def scale_report(args: argparse.Namespace, all_runs: list[ScaleRun], all_bursts: dict[str, list]) -> str:
    codes = list(dict.fromkeys(r.code for r in all_runs))
    rows, lat = [], []
    for r in all_runs:
        res = r.level
        c = max(1, r.cycles)
        base = next((b for b in all_runs if b.code == codes[0] and b.prompts == r.prompts
                     and b.level.labelers == res.labelers), None)
        ratio = (
            f"{(r.cycles / res.seconds) / (base.cycles / base.level.seconds):.2f}x"
            if base and base.cycles else f"n/a ({codes[0]}: 0 cycles)"
        )
        rows.append([r.code, str(r.prompts), str(res.labelers), str(r.cycles), f"{r.cycles / res.seconds:.1f}",
                     ratio, f"{1000 * res.server_cpu_s / c:.1f}", f"{1000 * r.pg_cpu_s / c:.1f}",
                     f"{res.load_before:.1f} / {res.load_after:.1f}",
                     "ok" if not any(res.checks[k] for k in CHECK_KEYS) else str({k: res.checks[k] for k in CHECK_KEYS})])
        by_endpoint: dict[str, list[float]] = defaultdict(list)
        for s in res.samples:
            by_endpoint[s.endpoint].append(s.seconds * 1000)
        for endpoint, values in sorted(by_endpoint.items()):
            p50, p95, p99 = percentiles(values)
            lat.append([r.code, str(r.prompts), str(res.labelers), endpoint, str(len(values)), f"{p50:.0f}",
                        f"{p95:.0f}", f"{p99:.0f}"])
    burst_rows = []
    for code, entries in all_bursts.items():
        for size, samples, idle in entries:
            if not samples:
                for endpoint, ms in sorted(idle.items()):
                    burst_rows.append([code, str(size), endpoint, f"{ms:.1f}", "-", "not run (idle request over 1 s)",
                                       "-", "-", "-"])
            for endpoint, values in sorted(samples.items()):
                statuses = Counter(s.status for s in values)
                p50, p95, p99 = percentiles([s.seconds * 1000 for s in values])
                burst_rows.append([code, str(size), endpoint, f"{idle.get(endpoint, float('nan')):.1f}",
                                   str(len(values)), ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
                                   f"{p50:.0f}", f"{p99:.0f}", f"{max(s.seconds for s in values) * 1000:.0f}"])
    return "\n\n".join([
        f"Measured {machine_line()}; server `rlhf serve --workers {args.workers}` on PostgreSQL, load generator on "
        "the same machine (httpx, asyncio, one connection per labeler), K="
        f"{args.k}, overlap={args.overlap}, the set's completions written beforehand, zero think time, at most "
        f"{args.max_requests} requests or {args.max_seconds:.0f} s per level, the labeling work reset between "
        "levels. A cycle = POST /tasks/next + POST /tasks/{id}/ranking. CPU per cycle: the server's processes and "
        "the PostgreSQL backends serving the bench database (/proc; backends found in pg_stat_activity at the "
        "start and end of the level), divided by the acknowledged rankings. Ratio: cycles/s against the first "
        "code measured, same set size and level, same sitting. The machine is shared (load = 1-minute load "
        "average before / after, 2 cores): absolute numbers move between runs, ratios from one sitting less. "
        f"Codes: {', '.join(codes)}. Command: `python bench/load.py --sizes {args.sizes} --levels {args.levels}"
        + (f" --compare {args.compare}" if args.compare else "") + "`.",
        markdown_table(["code", "prompts", "labelers", "cycles", "cycles/s", "ratio", "server CPU ms/cycle",
                        "PostgreSQL CPU ms/cycle", "load", "checks"], rows),
        markdown_table(["code", "prompts", "labelers", "endpoint", "n", "p50 ms", "p95 ms", "p99 ms"], lat),
        "Every labeler (the top level's number) opens the labeler home page and asks for `GET /api/v1/tasks/progress` "
        "and `GET /api/v1/me` at the same moment (three requests each, at once); idle ms = the median of up to 20 "
        "requests one at a time before the burst (the burst is left out where one idle request takes over 1 s):",
        markdown_table(["code", "prompts", "endpoint", "idle ms", "n", "statuses", "p50 ms", "p99 ms", "max ms"],
                       burst_rows),
    ])


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
    parser.add_argument("--profile", action="store_true", help="py-spy the server at the first level; print top entries")
    parser.add_argument("--section", default=None, help="docs/benchmarks.md section (default: Load, or Faults with a restart)")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--sizes", default="2000,50000",
                        help="prompt set sizes (the scale benchmark; --sizes '' runs the plain load levels)")
    parser.add_argument("--compare", default="",
                        help="another checkout (e.g. a worktree at main) measured first, in the same sitting")
    args = parser.parse_args()
    section = args.section or ("Faults" if args.restart_postgres_at else "Load")
    if args.sizes and not args.restart_postgres_at and not args.profile:
        all_runs: list[ScaleRun] = []
        all_bursts: dict[str, list] = {}
        checkouts = ([("before", Path(args.compare).resolve())] if args.compare else []) + [("this", REPO_ROOT)]
        for code, app_dir in checkouts:
            runs, bursts = run_scale(args, code, app_dir)
            all_runs += runs
            all_bursts[code] = bursts
        text = scale_report(args, all_runs, all_bursts)
        print(text)
        if not args.no_docs:
            write_section(args.section or "Labeling at scale", text)
        bad = [r for r in all_runs if r.code == "this" and any(r.level.checks[k] for k in CHECK_KEYS)]
        sys.exit(1 if bad else 0)

    levels = [int(x) for x in args.levels.split(",")]
    if args.profile:
        res = run_level(args, levels[0], profile=True)
        print(f"{len(res.samples)} requests in {res.seconds:.1f} s = {res.rps:.1f} req/s under the profiler; "
              f"load {res.load_before:.1f} -> {res.load_after:.1f}; CPU s: server {res.server_cpu_s:.0f}, "
              f"client {res.client_cpu_s:.0f}; db active {res.db_active_s:.0f} s, {res.db_sessions} connections opened; "
              f"checks {res.checks}")
        print(res.profile)
        return
    results = []
    for n in levels:
        print(f"--- {n} labelers", flush=True)
        res = run_level(args, n)
        results.append(res)
        print(f"{len(res.samples)} requests in {res.seconds:.1f} s = {res.rps:.1f} req/s; load "
              f"{res.load_before:.1f} -> {res.load_after:.1f}; CPU s: server {res.server_cpu_s:.0f} "
              f"({1000 * res.server_cpu_s / max(1, len(res.samples)):.1f} ms/req), "
              f"client {res.client_cpu_s:.0f}; db active {res.db_active_s:.0f} s, {res.db_sessions} connections opened; "
              f"statuses {dict(Counter(x.status for x in res.samples))}; "
              f"checks {res.checks}", flush=True)
    overview, latency, checks = summarize(results)
    parts = [
        f"Measured {machine_line()}; server `rlhf serve --workers {args.workers}` on PostgreSQL, "
        f"load generator on the same machine (httpx, asyncio, one connection per labeler), K={args.k}, "
        f"overlap={args.overlap}, zero think time, at most {args.max_requests} requests or "
        f"{args.max_seconds:.0f} s per level"
        + (f", PostgreSQL restarted {args.restart_postgres_at:.0f} s into each level" if args.restart_postgres_at else "")
        + ". Status 599 = connection error seen by the client. Load = the 1-minute load average before / after "
        "the level (other jobs share the machine); CPU s = CPU seconds used during the level by the server "
        "processes and by the load generator; server CPU ms/req is the least noisy figure when other jobs take "
        "CPU time. db active s = time PostgreSQL backends spent executing the server's statements (wall clock, "
        "lock and CPU waits included); db connections = connections the server opened during the level. Command: `python bench/load.py"
        + (f" --levels {args.levels}" if args.levels != "10,50,200" else "")
        + (f" --restart-postgres-at {args.restart_postgres_at:g}" if args.restart_postgres_at else "")
        + "`.",
        markdown_table(
            ["labelers", "requests", "seconds", "req/s", "statuses", "load", "server CPU s", "server CPU ms/req",
             "client CPU s", "db active s", "db connections"],
            overview,
        ),
        markdown_table(["labelers", "endpoint", "n", "p50 ms", "p95 ms", "p99 ms"], latency),
        "Checks from the database afterwards:",
        markdown_table(
            ["labelers", "acknowledged", "rankings stored", "acked missing", "acked duplicated",
             "over-assigned prompts", "labeler got prompt twice", "503", "other 5xx"],
            checks,
        ),
    ]
    faults = fault_lines(results)
    if faults:
        parts.append(faults)
    text = "\n\n".join(parts)
    print(text)
    if not args.no_docs:
        write_section(section, text)
    bad = [
        r for r in results
        if any(r.checks[k] for k in CHECK_KEYS) or (not args.restart_postgres_at and r.checks["server_503"])
    ]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

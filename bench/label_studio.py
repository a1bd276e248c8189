"""Label Studio, the peer: the same labeling loop against Label Studio 1.23.2 and rlhf-studio.

Optional and out of CI (pytest collects tests/ only; `make test` and .ci/run never call
this). It needs this machine's PostgreSQL (127.0.0.1:5432, user postgres, trust auth) and
a package index for the first run:

    python bench/label_studio.py                               # 10, 50, 200 labelers; writes docs/benchmarks.md
    python bench/label_studio.py --levels 10 --max-seconds 5 --no-docs   # a quick look
    python bench/label_studio.py --ls-venv /tmp/ls-venv         # Label Studio's venv elsewhere

Label Studio lives in its own venv (default /work/ls-venv; made with `python3 -m venv` and
`pip install label-studio==1.23.2 uwsgi` when it is missing, reused when it is there). It
runs on a fresh PostgreSQL database (``ls_bench_<hex>``, dropped afterwards), migrated
with its own `manage.py migrate`, and is served the way its Docker image serves it
(`label-studio-uwsgi` = `uwsgi --ini deploy/uwsgi.ini`): the same uwsgi options, with
`processes = 2` to match `rlhf serve --workers 2`, no `cheaper` (both workers up from the
start, as uvicorn's), and no nginx in front (the API requests below touch no static
files). Its settings module is core.settings.label_studio with DEBUG off, LOG_LEVEL=WARNING,
Sentry, analytics and the version check off.

One organization (legacy API tokens enabled: 1.23 disables them for new organizations,
and the DRF `Token` header is what a script uses) holds an admin and N labelers, each with
its own token. Per level a new project is made over the API with a Ranker config (a
`<List>` of the K=4 completions and `<Ranker>` on it), `maximum_annotations = 2` (the
overlap of rlhf-studio's set) and 2,000 tasks imported over the API (`POST
/api/projects/{id}/import`). Each labeler loops with zero think time:

    GET  /api/projects/{id}/next/          (Label Studio's labeling stream: the user's next task)
    POST /api/tasks/{task}/annotations/    (a Ranker result: the K item ids in a shuffled order)

and, in the same sitting, alternating which goes first per level, rlhf-studio runs
bench/load.py's loop (`drive`: POST /tasks/next, POST /tasks/{id}/ranking) on a set of
2,000 prompts with K=4 and overlap 2 (`seed_scale`, `reset_work` between levels,
`verify`). Both clients are httpx AsyncClients with one connection at a time per labeler
(bench/load.py's limits). rlhf-studio's keep theirs alive; uwsgi's http router closes the
connection after each response without a `Connection: close` (and nginx in front of it in
the image speaks HTTP/1.0 to it), so Label Studio's clients open one per request and keep
no cookies (token auth on every request). Both runs are bounded by --max-requests and
--max-seconds per level. Transport errors and 5xx answers from Label Studio are retried
with the same payload after a back-off (rlhf-studio's loop retries 503s the same way);
every status is counted.

A cycle = an acknowledged submission (a 201 annotation, a 200/201 ranking). Afterwards
Label Studio's database is checked: no task has more than `maximum_annotations`
annotations, no labeler annotated a task twice, every acknowledged annotation is stored.
CPU per cycle: user + system CPU of the server's process tree (/proc; uwsgi master, http
router and workers; uvicorn's processes), and the time PostgreSQL backends spent executing
statements for that server's database (pg_stat_database.active_time; Label Studio opens a
connection per request, so its backends do not live long enough to read from /proc).

The section "Label Studio" of docs/benchmarks.md is rewritten down to the line
``<!-- bench/load.py keeps what follows -->``; what follows it stays.
"""

from __future__ import annotations

import argparse
import asyncio
import http.cookiejar
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from app import migrate  # noqa: E402
from bench.load import (  # noqa: E402
    BASE_PG,
    CHECK_KEYS,
    LevelResult,
    Sample,
    _descendants,
    _libpq,
    cpu_seconds,
    create_database,
    db_counters,
    drive,
    drop_database,
    free_port,
    percentiles,
    reset_work,
    run_labelers,
    seed_scale,
    start_server,
    stop_server,
    verify,
    write_section,
)
from bench.report import machine_line, markdown_table  # noqa: E402

LS_VERSION = "1.23.2"
DEFAULT_VENV = Path("/work/ls-venv")

LABEL_CONFIG = """<View>
  <Text name="prompt" value="$prompt"/>
  <List name="results" value="$items" title="Completions"/>
  <Ranker name="rank" toName="results"/>
</View>"""

# Runs inside Label Studio's venv (Django ORM): an organization with legacy tokens, an admin
# and N labelers (no usable password: hashing 200 passwords would dominate the set-up).
SETUP_USERS = r"""
import json, sys
import django
django.setup()
from organizations.models import Organization
from rest_framework.authtoken.models import Token
from users.models import User

n = int(sys.argv[1])
admin = User.objects.create_user(email="admin@bench.local", password=None, is_staff=True, is_superuser=True)
org = Organization.create_organization(created_by=admin, title="bench", legacy_api_tokens_enabled=True)
org.jwt.legacy_api_tokens_enabled = True
org.jwt.save()
admin.active_organization = org
admin.save(update_fields=["active_organization"])
tokens = []
for i in range(n):
    user = User.objects.create_user(email=f"labeler{i}@bench.local", password=None)
    org.add_user(user)
    user.active_organization = org
    user.save(update_fields=["active_organization"])
    tokens.append(Token.objects.get_or_create(user=user)[0].key)
print("BENCH-JSON " + json.dumps({"admin": Token.objects.get_or_create(user=admin)[0].key, "labelers": tokens}))
"""

# deploy/uwsgi.ini of Label Studio's image, with processes = 2, no cheaper, no stats
# server or pidfile, and this venv and port.
UWSGI_INI = """[uwsgi]
chdir = {chdir}
home = {venv}
http = 127.0.0.1:{port}
module = core.wsgi:application
master = true
single-interpreter = true
processes = {processes}
threads = 1
vacuum = true
die-on-term = true
buffer-size = 65535
http-timeout = 300
need-app = true
env = APP_WEBSERVER=uwsgi
ignore-sigpipe = true
ignore-write-errors = true
disable-write-exception = true
harakiri = 120
harakiri-verbose = true
post-buffering = 4096
disable-logging = true
log-5xx = true
enable-threads = true
thunder-lock = true
lazy-apps = true
max-requests = 5000
reload-on-rss = 2048
worker-reload-mercy = 300
"""


# --- Label Studio: venv, database, server ---------------------------------------------


def ls_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def installed_version(venv: Path) -> str:
    if not (venv / "bin" / "uwsgi").exists() or not ls_python(venv).exists():
        return ""
    r = subprocess.run(
        [str(ls_python(venv)), "-c", "import importlib.metadata as m; print(m.version('label-studio'))"],
        capture_output=True, text=True,
    )
    return r.stdout.strip() if r.returncode == 0 else ""


def ensure_venv(venv: Path) -> None:
    """Label Studio and uwsgi in their own venv; reused when the right version is there."""
    if installed_version(venv) == LS_VERSION:
        return
    print(f"installing label-studio=={LS_VERSION} and uwsgi into {venv} (minutes)", flush=True)
    python3 = shutil.which("python3") or sys.executable
    if not ls_python(venv).exists():
        subprocess.run([python3, "-m", "venv", str(venv)], check=True)
    pip = [str(ls_python(venv)), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    subprocess.run(pip + [f"label-studio=={LS_VERSION}", "uwsgi"], check=True)
    if installed_version(venv) != LS_VERSION:
        raise SystemExit(f"label-studio {LS_VERSION} did not install into {venv}")


def package_dir(venv: Path) -> Path:
    r = subprocess.run(
        [str(ls_python(venv)), "-c", "import label_studio, os; print(os.path.dirname(label_studio.__file__))"],
        capture_output=True, text=True, check=True,
    )
    return Path(r.stdout.strip())


def ls_env(db_name: str, data_dir: Path) -> dict[str, str]:
    """Environment of Label Studio's processes (core/settings/base.py and label_studio.py)."""
    pg = make_url(BASE_PG)
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    return {
        **keep,
        "DJANGO_SETTINGS_MODULE": "core.settings.label_studio",
        "DJANGO_DB": "default",
        "POSTGRE_NAME": db_name,
        "POSTGRE_USER": pg.username or "postgres",
        "POSTGRE_PASSWORD": pg.password or "",
        "POSTGRE_HOST": pg.host or "127.0.0.1",
        "POSTGRE_PORT": str(pg.port or 5432),
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "COLLECT_ANALYTICS": "false",
        "LATEST_VERSION_CHECK": "false",
        "FEATURE_FLAGS_OFFLINE": "true",
        "PYTHONUNBUFFERED": "1",
    }


def create_ls_database() -> str:
    name = f"ls_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_libpq(BASE_PG), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(BASE_PG).set(database=name).render_as_string(hide_password=False)


def ls_manage(venv: Path, pkg: Path, env: dict[str, str], *args: str, script: str | None = None) -> str:
    """``manage.py ARGS`` (or ``python -c SCRIPT ARGS``) in Label Studio's venv; its stdout."""
    cmd = [str(ls_python(venv))] + (["-c", script] if script else [str(pkg / "manage.py")]) + list(args)
    r = subprocess.run(cmd, cwd=pkg, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r.stdout


def start_ls(venv: Path, pkg: Path, env: dict[str, str], port: int, processes: int, workdir: Path) -> subprocess.Popen:
    ini = workdir / "uwsgi.ini"
    ini.write_text(UWSGI_INI.format(chdir=pkg, venv=venv, port=port, processes=processes))
    log = open(workdir / "uwsgi.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([str(venv / "bin" / "uwsgi"), "--ini", str(ini)], cwd=pkg, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = str(workdir / "uwsgi.log")  # type: ignore[attr-defined]
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                # lazy-apps: every worker loads Django itself; give the others time, then warm them up
                time.sleep(3.0)
                for _ in range(4 * processes):
                    httpx.get(f"http://127.0.0.1:{port}/health", timeout=60)
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"uwsgi exited: {Path(proc.log_path).read_text()[-3000:]}")  # type: ignore[attr-defined]
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"Label Studio did not become healthy: {Path(proc.log_path).read_text()[-3000:]}")  # type: ignore[attr-defined]


def make_project(base_url: str, admin_token: str, tasks: int, k: int, overlap: int, seed: int) -> int:
    """A Ranker project with ``tasks`` tasks of K items each, made and filled over the API."""
    headers = {"Authorization": f"Token {admin_token}"}
    no_keepalive = httpx.Limits(max_keepalive_connections=0)  # uwsgi's router closes every connection
    with httpx.Client(base_url=base_url, headers=headers, timeout=600, limits=no_keepalive) as c:
        r = c.post("/api/projects/", json={
            "title": f"ranker bench {seed}", "label_config": LABEL_CONFIG,
            "maximum_annotations": overlap, "overlap_cohort_percentage": 100,
            "show_skip_button": False, "enable_empty_annotation": False,
        })
        r.raise_for_status()
        project = r.json()["id"]
        data = [
            {"prompt": f"Ranker prompt {seed}-{i}",
             "items": [{"id": f"c{j}", "title": f"completion {j}", "body": f"answer {j} to prompt {i}"}
                       for j in range(k)]}
            for i in range(tasks)
        ]
        r = c.post(f"/api/projects/{project}/import", json=data)
        r.raise_for_status()
        got = r.json().get("task_count")
        if got != tasks:
            raise RuntimeError(f"Label Studio imported {got} tasks, not {tasks}: {r.text[:500]}")
    return project


# --- the loop against Label Studio ------------------------------------------------------


async def ls_labeler(client: httpx.AsyncClient, project: int, budget: dict[str, float], result: LevelResult,
                     rng: random.Random, t0: float) -> None:
    """next -> annotation until no task is left (404) or the budget is spent."""
    deadline = budget["deadline"]

    async def call(endpoint: str, method: str, url: str, body: dict | None) -> httpx.Response | None:
        for attempt in range(30):
            if time.monotonic() > deadline or budget["requests"] <= 0:
                return None
            budget["requests"] -= 1
            if attempt and body is not None:
                result.resent += 1
            start = time.perf_counter()
            try:
                r = await client.request(method, url, json=body)
            except httpx.TransportError as exc:
                result.samples.append(Sample(endpoint, 599, time.perf_counter() - start, start - t0))
                result.details[(599, f"{type(exc).__name__}: {str(exc)[:60]} ({endpoint})")] += 1
                await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
                continue
            result.samples.append(Sample(endpoint, r.status_code, time.perf_counter() - start, start - t0))
            if r.status_code >= 500:
                result.details[(r.status_code, r.text[:80].replace("\n", " "))] += 1
                await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
                continue
            return r
        return None

    while True:
        r = await call("GET /api/projects/{id}/next/", "GET", f"/api/projects/{project}/next/", None)
        if r is None or r.status_code != 200:
            if r is not None and r.status_code != 404:
                result.details[(r.status_code, r.text[:80].replace("\n", " "))] += 1
            return
        task = r.json()
        ids = [item["id"] for item in task["data"]["items"]]
        rng.shuffle(ids)
        body = {
            "result": [{"from_name": "rank", "to_name": "results", "type": "ranker", "origin": "manual",
                        "value": {"ranker": {"rank": ids}}}],
            "lead_time": 0.0, "project": project,
        }
        r = await call("POST /api/tasks/{id}/annotations/", "POST", f"/api/tasks/{task['id']}/annotations/", body)
        if r is None:
            return
        if r.status_code == 201:
            result.acked[r.json()["id"]] = 1  # keyed by annotation id: two labelers share a task
        else:
            result.details[(r.status_code, r.text[:80].replace("\n", " "))] += 1


async def drive_ls(base_url: str, project: int, tokens: list[str], max_requests: int,
                   max_seconds: float) -> LevelResult:
    result = LevelResult(labelers=len(tokens), seconds=0.0)
    # One connection at a time per labeler, as bench/load.py's drive, but none kept alive: uwsgi's
    # http router closes each connection after the response without saying so (no
    # `Connection: close`), and nginx in front of it in the image speaks HTTP/1.0 to it.
    # Cookies are refused: every request authenticates with its token only.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=0)
    no_cookies = http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    clients = [
        httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Token {t}"}, limits=limits, timeout=60,
                          verify=False, cookies=no_cookies)
        for t in tokens
    ]

    async def loop(client: httpx.AsyncClient, budget: dict[str, float], result: LevelResult, rng: random.Random,
                   perf0: float) -> None:
        await ls_labeler(client, project, budget, result, rng, perf0)

    return await run_labelers(clients, loop, max_requests, max_seconds, result)


def verify_ls(url: str, project: int, overlap: int, result: LevelResult) -> dict[str, int]:
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        over = conn.execute(
            "SELECT count(*) FROM (SELECT task_id FROM task_completion WHERE project_id = %s AND NOT was_cancelled "
            "GROUP BY task_id HAVING count(*) > %s) t", (project, overlap),
        ).fetchone()[0]
        twice = conn.execute(
            "SELECT count(*) FROM (SELECT task_id FROM task_completion WHERE project_id = %s "
            "GROUP BY task_id, completed_by_id HAVING count(*) > 1) t", (project,),
        ).fetchone()[0]
        ids = list(result.acked)
        stored = conn.execute(
            "SELECT count(*) FROM task_completion WHERE id = ANY(%s)", (ids or [-1],)
        ).fetchone()[0]
        total = conn.execute("SELECT count(*) FROM task_completion WHERE project_id = %s", (project,)).fetchone()[0]
        labeled = conn.execute(
            "SELECT count(*) FROM task WHERE project_id = %s AND is_labeled", (project,)
        ).fetchone()[0]
    return {
        "over_assigned_prompts": int(over),
        "labeler_prompt_twice": int(twice),
        "acked_missing": len(ids) - int(stored),
        "acked_duplicated": 0,  # annotation ids are primary keys
        "acked": len(ids),
        "rankings_stored": int(total),
        "tasks_submitted": int(labeled),
        "server_503": result.count(503),
        "server_5xx": sum(1 for s in result.samples if 500 <= s.status < 599 and s.status != 503),
    }


# --- a sitting --------------------------------------------------------------------------


@dataclass
class Run:
    server: str  # "Label Studio" or "rlhf-studio"
    level: LevelResult
    server_cpu_s: float
    db_active_s: float
    db_sessions: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    lock_bugs: int = 0  # Label Studio's own "Num takes=... > overlap=... - it's a bug" log lines
    log_errors: int = 0  # [ERROR] lines in Label Studio's log during the level
    queue_full: int = 0  # uwsgi's "listen queue of socket ... full" warnings (at most one a second)

    @property
    def cycles(self) -> int:
        return len(self.level.acked)

    @property
    def rate(self) -> float:
        return self.cycles / self.level.seconds if self.level.seconds else 0.0

    def p99(self, word: str) -> float:
        values = [s.seconds * 1000 for s in self.level.samples if word in s.endpoint]
        return percentiles(values)[2] if values else float("nan")


def measured(server: str, pids_of, db_url: str, go) -> Run:
    """Run ``go()`` (a LevelResult) with the server's CPU and its database's counters around it."""
    pids = pids_of()
    load0 = os.getloadavg()
    cpu0 = cpu_seconds(pids)
    sessions0, active0 = db_counters(db_url)
    res = go()
    cpu1 = cpu_seconds(pids)
    if sorted(pids_of()) != sorted(pids):  # e.g. uwsgi recycled a worker: its CPU time is lost
        print(f"warning: {server}'s processes changed during the level; its CPU figure is low", flush=True)
    time.sleep(1.0)  # the backends' statistics reach pg_stat_database within a second
    sessions1, active1 = db_counters(db_url)
    return Run(server, res, cpu1 - cpu0, (active1 - active0) / 1000, sessions1 - sessions0 - 1, load0,
               os.getloadavg())


def sitting(args: argparse.Namespace, levels: list[int]) -> tuple[list[Run], dict[str, str]]:
    venv = Path(args.ls_venv)
    ensure_venv(venv)
    pkg = package_dir(venv)
    facts = {"ls_version": installed_version(venv)}
    runs: list[Run] = []
    work = Path(tempfile.mkdtemp(prefix="ls-bench-"))
    ls_url = create_ls_database()
    rlhf_url = create_database(args.pg_url)
    ls_proc = rlhf_proc = None
    try:
        env = ls_env(make_url(ls_url).database, work / "data")
        t = time.time()
        ls_manage(venv, pkg, env, "migrate", "--no-input")
        print(f"Label Studio migrated in {time.time() - t:.0f} s", flush=True)
        out = ls_manage(venv, pkg, env, str(max(levels)), script=SETUP_USERS)
        creds = json.loads(next(line for line in out.splitlines() if line.startswith("BENCH-JSON "))[11:])
        ls_port = free_port()
        ls_proc = start_ls(venv, pkg, env, ls_port, args.workers, work)
        ls_base = f"http://127.0.0.1:{ls_port}"
        print(f"Label Studio {facts['ls_version']} under uwsgi at {ls_base}", flush=True)

        migrate.upgrade(rlhf_url)
        set_id, tokens, _ = seed_scale(rlhf_url, max(levels), args.tasks, args.k, args.overlap)
        with psycopg.connect(_libpq(rlhf_url), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        rlhf_port = free_port()
        rlhf_proc = start_server(rlhf_url, rlhf_port, args.workers)
        rlhf_pids = _descendants(rlhf_proc.pid)
        rlhf_base = f"http://127.0.0.1:{rlhf_port}"

        for i, n in enumerate(levels):
            def ls_level(n: int = n, i: int = i) -> Run:
                t = time.time()
                project = make_project(ls_base, creds["admin"], args.tasks, args.k, args.overlap, i)
                print(f"[Label Studio] project {project}: {args.tasks} tasks imported in {time.time() - t:.0f} s",
                      flush=True)
                with psycopg.connect(_libpq(ls_url), autocommit=True) as conn:
                    conn.execute("VACUUM ANALYZE")
                log_at = Path(ls_proc.log_path).stat().st_size  # type: ignore[attr-defined]
                run = measured("Label Studio", lambda: _descendants(ls_proc.pid), ls_url, lambda: asyncio.run(
                    drive_ls(ls_base, project, creds["labelers"][:n], args.max_requests, args.max_seconds)))
                run.level.checks = verify_ls(ls_url, project, args.overlap, run.level)
                with open(ls_proc.log_path, "rb") as log:  # type: ignore[attr-defined]
                    log.seek(log_at)
                    text = log.read().decode(errors="replace")
                run.lock_bugs = text.count("it's a bug")
                run.log_errors = sum(1 for line in text.splitlines() if "[ERROR]" in line)
                run.queue_full = text.count("listen queue of socket")
                return run

            def rlhf_level(n: int = n) -> Run:
                reset_work(rlhf_url)
                run = measured("rlhf-studio", lambda: rlhf_pids, rlhf_url, lambda: asyncio.run(
                    drive(rlhf_base, set_id, tokens[:n], args.max_requests, args.max_seconds)))
                run.level.checks = verify(rlhf_url, set_id, args.overlap, run.level)
                return run

            order = (ls_level, rlhf_level) if i % 2 == 0 else (rlhf_level, ls_level)
            for step in order:
                run = step()
                runs.append(run)
                statuses = dict(sorted(Counter(s.status for s in run.level.samples).items()))
                print(f"[{run.server}] {n} labelers: {run.cycles} cycles in {run.level.seconds:.1f} s = "
                      f"{run.rate:.1f}/s; server CPU {1000 * run.server_cpu_s / max(1, run.cycles):.1f} ms/cycle, "
                      f"PostgreSQL active {1000 * run.db_active_s / max(1, run.cycles):.1f} ms/cycle; "
                      f"statuses {statuses}; load {run.load_before[0]:.1f} -> {run.load_after[0]:.1f}; "
                      f"checks {run.level.checks}"
                      + (f"; log errors {run.log_errors} ({run.lock_bugs} lock), uwsgi queue full in "
                         f"{run.queue_full} s" if run.server == "Label Studio" else ""), flush=True)
                if run.level.details:
                    print(f"    answers: {dict(run.level.details.most_common(5))}", flush=True)
    finally:
        for proc in (ls_proc, rlhf_proc):
            if proc is not None:
                stop_server(proc)
        if ls_proc is not None and args.keep_logs:
            print(f"uwsgi log: {ls_proc.log_path}")  # type: ignore[attr-defined]
        drop_database(BASE_PG, ls_url)
        drop_database(args.pg_url, rlhf_url)
        if not args.keep_logs:
            shutil.rmtree(work, ignore_errors=True)
    return runs, facts


def report(args: argparse.Namespace, runs: list[Run], facts: dict[str, str], levels: list[int]) -> str:
    rows, lat, checks = [], [], []
    for n in levels:
        ls = next(r for r in runs if r.server == "Label Studio" and r.level.labelers == n)
        rl = next(r for r in runs if r.server == "rlhf-studio" and r.level.labelers == n)
        ratio = f"{rl.rate / ls.rate:.1f}x" if ls.rate else "n/a (Label Studio: 0 cycles)"
        first = "Label Studio" if runs.index(ls) < runs.index(rl) else "rlhf-studio"
        rows.append([
            str(n), f"{ls.rate:.1f}", f"{rl.rate:.1f}", ratio, f"{ls.cycles / n:.1f}",
            f"{ls.p99('next'):.0f}", f"{rl.p99('next'):.0f}",
            f"{1000 * ls.server_cpu_s / max(1, ls.cycles):.1f}", f"{1000 * rl.server_cpu_s / max(1, rl.cycles):.1f}",
            f"{1000 * ls.db_active_s / max(1, ls.cycles):.1f}", f"{1000 * rl.db_active_s / max(1, rl.cycles):.1f}",
            first,
        ])
    for r in runs:
        statuses = Counter(s.status for s in r.level.samples)
        by_endpoint: dict[str, list[float]] = defaultdict(list)
        for s in r.level.samples:
            by_endpoint[s.endpoint].append(s.seconds * 1000)
        for endpoint, values in sorted(by_endpoint.items()):
            p50, p95, p99 = percentiles(values)
            lat.append([r.server, str(r.level.labelers), f"`{endpoint}`", str(len(values)), f"{p50:.0f}",
                        f"{p95:.0f}", f"{p99:.0f}"])
        c = r.level.checks
        bad = {k: c[k] for k in CHECK_KEYS if c[k]}
        checks.append([
            r.server, str(r.level.labelers), str(r.cycles), f"{r.level.seconds:.1f}", str(len(r.level.samples)),
            ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())), str(r.level.resent),
            str(c["over_assigned_prompts"]), str(c["labeler_prompt_twice"]), str(c["acked_missing"]),
            "ok" if not bad else str(bad),
            f"{r.log_errors} ({r.lock_bugs} lock)" if r.server == "Label Studio" else "-",
            str(r.queue_full) if r.server == "Label Studio" else "-",
            str(r.db_sessions),
            " / ".join(f"{x:.1f}" for x in r.load_before) + " -> " + " / ".join(f"{x:.1f}" for x in r.load_after),
        ])
    errors = [
        f"{r.server}, {r.level.labelers} labelers: "
        + "; ".join(f"{n} x {status} `{detail}`" for (status, detail), n in r.level.details.most_common(4))
        for r in runs if r.level.details
    ]
    command = ("python bench/label_studio.py"
               + (f" --levels {args.levels}" if args.levels != "10,50,200" else "")
               + (f" --max-seconds {args.max_seconds:g}" if args.max_seconds != 20 else "")
               + (f" --max-requests {args.max_requests}" if args.max_requests != 2000 else "")
               + (f" --tasks {args.tasks}" if args.tasks != 2000 else ""))
    parts = [
        f"Measured {machine_line()}, in one sitting; Label Studio {facts['ls_version']} (its own venv, "
        f"uwsgi with its image's deploy/uwsgi.ini, `processes = {args.workers}`, no nginx) against rlhf-studio "
        f"(`rlhf serve --workers {args.workers}`, uvicorn), both on this machine's PostgreSQL, each on a fresh "
        f"database; {args.tasks} tasks / prompts, K={args.k}, overlap {args.overlap} (Label Studio: "
        f"`maximum_annotations = {args.overlap}`), N labelers with zero think time looping next task -> submit a "
        f"ranking of the K items, at most {args.max_requests} requests or {args.max_seconds:g} s per level, the "
        "two servers alternating which runs first per level. Label Studio's loop: "
        "`GET /api/projects/{id}/next/` then `POST /api/tasks/{id}/annotations/` with a Ranker result (a `<List>` "
        "of the K completions ranked by `<Ranker>`), legacy `Token` auth; a fresh project with the tasks imported "
        "over the API per level. rlhf-studio's: bench/load.py's `drive` (`POST /api/v1/tasks/next` then `POST "
        "/api/v1/tasks/{id}/ranking`), the labeling work reset between levels. A cycle = an acknowledged "
        "submission. Cycles/s = cycles over the level's seconds (until the last labeler stopped: requests in "
        "flight at the deadline finish first, as in bench/load.py). Ratio = rlhf-studio cycles/s over Label "
        "Studio's (the issue's target: at least 10x). LS cycles per labeler: where it is about 1 or less, the "
        "level is Label Studio's start-up transient (every labeler's first next task), not a steady state. CPU "
        "ms/cycle: user + system CPU of the server's process tree; PostgreSQL ms/cycle: time backends spent "
        "executing that server's statements (pg_stat_database.active_time: wall clock inside PostgreSQL). "
        "The machine is shared with other jobs: load = 1 / 5 / 15-minute load averages before -> after each "
        "level (os.getloadavg). This benchmark is optional and out of CI (pytest collects tests/ only). "
        f"Command: `{command}`.",
        markdown_table(["labelers", "Label Studio cycles/s", "rlhf-studio cycles/s", "ratio",
                        "LS cycles per labeler",
                        "p99 next ms (LS)", "p99 next ms (rlhf)", "server CPU ms/cycle (LS)",
                        "server CPU ms/cycle (rlhf)", "PostgreSQL ms/cycle (LS)", "PostgreSQL ms/cycle (rlhf)",
                        "ran first"], rows),
        markdown_table(["server", "labelers", "endpoint", "n", "p50 ms", "p95 ms", "p99 ms"], lat),
        "Statuses (599 = connection error seen by the client) and the database checks afterwards (tasks over "
        "the overlap, a labeler twice on one task, acknowledged submissions not stored; LS log errors = "
        "`[ERROR]` lines in Label Studio's log during the level, of them `lock` = its own `Num takes=N > "
        "overlap=2 for task=T, skipped mode REQUEUE_FOR_OTHERS - it's a bug` from its task locks; uwsgi queue "
        "full = seconds in which uwsgi logged `listen queue of socket ... full` (the image's uwsgi.ini leaves "
        "`listen` at uwsgi's default of 100 connections; the http router drops a request it cannot queue, "
        "which the client sees as a connection closed without an answer, 599); db connections "
        "= PostgreSQL sessions the server opened during the level):",
        markdown_table(["server", "labelers", "cycles", "seconds", "requests", "statuses", "re-sent",
                        "over overlap", "labeler twice", "acked missing", "checks", "LS log errors",
                        "uwsgi queue full", "db connections", "load before -> after"],
                       checks),
    ]
    if errors:
        parts.append("Error answers (first 80 characters): " + " | ".join(errors) + ".")
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="10,50,200", help="comma-separated labeler counts")
    parser.add_argument("--max-requests", type=int, default=2000, help="request budget per level and server")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="time budget per level and server")
    parser.add_argument("--tasks", type=int, default=2000, help="tasks (Label Studio) / prompts (rlhf-studio)")
    parser.add_argument("--k", type=int, default=4, help="items to rank per task")
    parser.add_argument("--overlap", type=int, default=2, help="labelers per task")
    parser.add_argument("--workers", type=int, default=2, help="uwsgi processes and uvicorn workers")
    parser.add_argument("--ls-venv", default=str(DEFAULT_VENV), help="Label Studio's venv (made when missing)")
    parser.add_argument("--pg-url", default=BASE_PG, help="PostgreSQL server database for rlhf-studio's bench db")
    parser.add_argument("--keep-logs", action="store_true", help="keep Label Studio's data dir and uwsgi log")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x]
    runs, facts = sitting(args, levels)
    text = report(args, runs, facts, levels)
    print(text)
    if not args.no_docs:
        write_section("Label Studio", text)
    bad = [r for r in runs if r.server == "rlhf-studio" and any(r.level.checks[k] for k in CHECK_KEYS)]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

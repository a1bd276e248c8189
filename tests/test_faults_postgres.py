"""PostgreSQL restarted under labelers: 503 with a clear message while it is down, recovery
without restarting the app, no acknowledged submission lost, retries idempotent. And a
pool with no free connection is a 503 too.

The test starts its own throwaway PostgreSQL cluster (initdb + pg_ctl, as the `postgres`
OS user when run as root) on a free port, so stopping it disturbs nothing else on the
machine. It serves the app with a real `rlhf serve` subprocess, drives a few labelers
over HTTP (a failed request is sent again with the same payload), stops the cluster with
`pg_ctl stop -m immediate` (a crash, as far as PostgreSQL is concerned), checks the
answers while it is down, starts it again, and checks everything from the database.
Skipped when the PostgreSQL server binaries are not installed.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from app import migrate
from app.db import Database
from app.models import Ranking, Task
from app.models.base import utcnow
from app.services import tokens, users
from tests.factories import ready_set

ROOT = Path(__file__).resolve().parent.parent
LABELERS = 4
OVERLAP = 2


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A private PostgreSQL cluster in a temporary directory (trust auth, 127.0.0.1 only)."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.port = _free_port()
        self.as_postgres = os.geteuid() == 0  # initdb and postgres refuse to run as root
        if self.as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(root, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / tool), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{tool} failed: {result.stdout[-1500:]}{result.stderr[-1500:]}"
        return result

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off -c max_connections=50"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")

    def stop(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are not installed")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` OS user to run a private cluster as")
    root = Path(tempfile.mkdtemp(prefix="rlhf-pg-"))
    c = Cluster(bindir, root)
    c.start()
    try:
        yield c
    finally:
        try:
            c.stop("immediate")
        except AssertionError:
            pass
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Labelers:
    """Simulated labelers: next -> rank, sending a failed request again with the same payload."""

    base: str
    tokens: list[str]
    set_id: int
    stop: threading.Event = field(default_factory=threading.Event)
    acked: dict[int, list[int]] = field(default_factory=dict)  # task id -> ranking ids answered
    sent: dict[int, tuple[str, dict]] = field(default_factory=dict)  # task id -> (token, body)
    statuses: Counter = field(default_factory=Counter)
    details: Counter = field(default_factory=Counter)  # (status, detail) of 5xx answers
    resent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _post(self, client: httpx.Client, url: str, body: dict) -> httpx.Response | None:
        """POST until a non-503 answer (same payload each time) or until told to stop."""
        attempt = 0
        while not self.stop.is_set():
            if attempt and "/ranking" in url:
                with self.lock:
                    self.resent += 1
            attempt += 1
            try:
                r = client.post(url, json=body)
            except httpx.TransportError:
                with self.lock:
                    self.statuses["transport error"] += 1
                time.sleep(0.1)
                continue
            with self.lock:
                self.statuses[r.status_code] += 1
                if r.status_code >= 500:
                    self.details[(r.status_code, r.json().get("detail"))] += 1
            if r.status_code == 503:
                time.sleep(0.1)
                continue
            return r
        return None

    def run_one(self, token: str) -> None:
        with httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            while not self.stop.is_set():
                r = self._post(client, "/api/v1/tasks/next", {"prompt_set_id": self.set_id, "kind": "rank"})
                if r is None:
                    return
                if r.status_code == 204:
                    time.sleep(0.05)
                    continue
                assert r.status_code == 200, r.text
                task = r.json()
                body = {"ranking": [[c["id"]] for c in task["completions"]], "time_spent_s": 1.0}
                r = self._post(client, f"/api/v1/tasks/{task['id']}/ranking", body)
                if r is None:
                    return
                assert r.status_code in (200, 201), r.text
                with self.lock:
                    self.acked.setdefault(task["id"], []).append(r.json()["id"])
                    self.sent[task["id"]] = (token, body)

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.run_one, args=(t,), daemon=True) for t in self.tokens]
        for t in threads:
            t.start()
        return threads

    def count(self) -> int:
        with self.lock:
            return len(self.acked)


def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.postgres
def test_postgres_restart_under_labelers_answers_503_recovers_and_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    url = cluster.url()
    migrate.upgrade(url)
    database = Database(url)
    with database.session() as db:
        ps, _, _ = ready_set(db, "faults", n_prompts=200, k=3, overlap=OVERLAP)
        set_id = ps.id
        plaintexts = []
        for i in range(LABELERS):
            user = users.create_user(db, f"labeler{i}", "correct-horse-battery", "labeler")
            plaintexts.append(tokens.create_token(db, user, "faults")[1])

    port = _free_port()
    log_path = tmp_path / "server.log"
    env = {
        **os.environ,
        "RLHF_DATABASE_URL": url,
        "RLHF_SECRET_KEY": "test",
        "RLHF_DATA_DIR": str(tmp_path / "data"),
        "RLHF_GOLD_RATE": "0",
        "PYTHONUNBUFFERED": "1",
    }
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {plaintexts[0]}"}, timeout=30)
    labelers = Labelers(base, plaintexts[1:], set_id)
    threads: list[threading.Thread] = []
    try:
        def healthy() -> bool:
            try:
                return api.get("/api/v1/health").status_code == 200
            except httpx.TransportError:
                assert server.poll() is None, log_path.read_text()[-3000:]
                return False

        _wait_for(healthy, 60, "the server to start")
        threads = labelers.start()
        _wait_for(lambda: labelers.count() >= 15, 60, "the first acknowledged submissions")
        r = api.post("/api/v1/tasks/next", json={"prompt_set_id": set_id, "kind": "rank"})
        assert r.status_code == 200, r.text
        held = r.json()  # a task whose submission will be sent while PostgreSQL is down
        held_body = {"ranking": [[c["id"]] for c in held["completions"]], "time_spent_s": 2.0}

        # --- PostgreSQL goes away (immediate stop: no clean shutdown, connections cut).
        cluster.stop("immediate")
        time.sleep(0.5)
        before_outage = labelers.count()  # a response already on its way may land just after the stop
        health = api.get("/api/v1/health")
        assert health.status_code == 503, health.text
        assert health.json()["status"] == "unavailable" and health.json()["database"] == "unreachable"
        for _ in range(3):  # pooled connections are dead now, and new ones are refused
            r = api.post("/api/v1/tasks/next", json={"prompt_set_id": set_id, "kind": "rank"})
            assert r.status_code == 503, r.text
            assert r.json() == {"detail": "database unavailable; try again shortly"}
            assert r.headers["retry-after"] == "2"
        r = api.post(f"/api/v1/tasks/{held['id']}/ranking", json=held_body)
        assert r.status_code == 503 and r.json()["detail"] == "database unavailable; try again shortly"
        time.sleep(1.0)  # the labelers keep retrying meanwhile
        assert labelers.count() == before_outage  # nothing was acknowledged while it was down

        # --- It comes back; the same app process recovers on its own.
        cluster.start()
        _wait_for(healthy, 30, "the app to see PostgreSQL again")
        # The failed submission, sent again with the same payload, is stored now (201) and
        # once only: another resend answers 200 with the same row.
        r = api.post(f"/api/v1/tasks/{held['id']}/ranking", json=held_body)
        assert r.status_code == 201, r.text
        again = api.post(f"/api/v1/tasks/{held['id']}/ranking", json={**held_body, "time_spent_s": 3.0})
        assert again.status_code == 200 and again.json()["id"] == r.json()["id"], again.text
        with labelers.lock:
            labelers.acked[held["id"]] = [r.json()["id"]]
            labelers.sent[held["id"]] = (plaintexts[0], held_body)
        _wait_for(lambda: labelers.count() >= before_outage + 15, 60, "submissions after the restart")
        assert server.poll() is None  # never restarted
        labelers.stop.set()
        for t in threads:
            t.join(timeout=30)

        # A client retry of an acknowledged submission is idempotent: same row, 200.
        acked = dict(labelers.acked)
        for task_id in list(acked)[:3] + list(acked)[-3:]:
            token, body = labelers.sent[task_id]
            r = httpx.post(f"{base}/api/v1/tasks/{task_id}/ranking", json=body,
                           headers={"Authorization": f"Bearer {token}"}, timeout=30)
            assert r.status_code == 200 and r.json()["id"] == acked[task_id][0], r.text
    finally:
        labelers.stop.set()
        for t in threads:
            t.join(timeout=30)
        api.close()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    server_log = log_path.read_text()
    assert labelers.statuses[500] == 0, (labelers.details, server_log[-4000:])
    assert all(status == 503 for status, _ in labelers.details), labelers.details
    assert labelers.statuses[503] >= 1
    assert " 500 " not in server_log and "Internal Server Error" not in server_log, server_log[-4000:]

    # --- Every acknowledged submission is stored exactly once; a resend got the same row.
    with database.session() as db:
        stored = Counter(db.scalars(select(Ranking.task_id).where(Ranking.task_id.in_(list(acked)))))
        assert all(stored[t] == 1 for t in acked), {t: stored[t] for t in acked if stored[t] != 1}
        ranking_of = dict(db.execute(select(Ranking.task_id, Ranking.id).where(Ranking.task_id.in_(list(acked)))).all())
        assert all(set(ids) == {ranking_of[t]} for t, ids in acked.items())
        # Every stored ranking belongs to a submitted task; at most the requests in flight
        # when the labelers stopped are stored without having been acknowledged.
        total = db.scalar(select(func.count(Ranking.id)))
        assert total == db.scalar(select(func.count(Task.id)).where(Task.status == "submitted"))
        assert len(acked) <= total <= len(acked) + LABELERS
        # No slot over-assigned, no labeler given a prompt twice.
        now = utcnow()
        live = (Task.status == "submitted") | ((Task.status == "leased") & (Task.lease_expires_at > now))
        per_prompt = db.execute(select(Task.prompt_id, func.count()).where(live).group_by(Task.prompt_id)).all()
        assert max(n for _, n in per_prompt) <= OVERLAP
        twice = db.execute(
            select(Task.labeler_id, Task.prompt_id)
            .where(Task.status != "expired")
            .group_by(Task.labeler_id, Task.prompt_id)
            .having(func.count() > 1)
        ).all()
        assert twice == []

    database.dispose()
    print(f"acknowledged {len(acked)}, resent {labelers.resent}, statuses {dict(labelers.statuses)}, 5xx {dict(labelers.details)}")


def test_no_free_database_connection_answers_503_not_500(db_url: str, settings, make_account) -> None:  # type: ignore[no-untyped-def]
    """Overload: every pooled connection busy past the pool timeout is a 503 with a message."""
    from fastapi.testclient import TestClient
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from app.main import create_app

    labeler = make_account("labeler")
    tiny = Database(db_url)
    tiny.engine.dispose()
    tiny.engine = create_engine(db_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    tiny.sessionmaker = sessionmaker(tiny.engine, expire_on_commit=False)
    try:
        with TestClient(create_app(settings, tiny)) as client:
            assert client.get("/api/v1/tasks/progress?prompt_set_id=1", headers=labeler.headers).status_code == 404
            with tiny.engine.connect():  # the only connection, held
                r = client.post("/api/v1/tasks/next", json={"prompt_set_id": 1, "kind": "rank"}, headers=labeler.headers)
            assert r.status_code == 503, r.text
            assert r.json() == {"detail": "server busy: no database connection free; try again shortly"}
            assert r.headers["retry-after"] == "2"
    finally:
        tiny.dispose()

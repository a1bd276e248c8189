"""`rlhf run` as a user starts it: a subprocess on a fresh data dir (embedded SQLite).

It must serve the health endpoint and the login page, print the admin's password once
(which logs in), have its worker sample completions for the demo set, stop both
processes on SIGINT, and reuse everything on a second start.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import func, select

from app.db import Database
from app.models import Completion, Policy, Prompt, PromptSet, User

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_")}
    env.update(
        RLHF_DATA_DIR=str(data_dir),
        RLHF_BOOTSTRAP_BASE="tiny",
        RLHF_BUFFER_PROMPTS="4",
        RLHF_SAMPLER_BATCH_SIZE="4",
        RLHF_WORKER_POLL_S="0.5",
        RLHF_HEARTBEAT_S="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
    )
    return env


class Started:
    def __init__(self, data_dir: Path, log: Path) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "run", "--port", str(self.port)],
            cwd=ROOT,
            env=_env(data_dir),
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"rlhf run exited early:\n{self.output()}"
            try:
                r = httpx.get(f"{self.base}/api/v1/health", timeout=2)
                if r.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"rlhf run did not serve /api/v1/health in {timeout_s:.0f} s:\n{self.output()}")

    def worker_pid(self) -> int:
        m = re.search(r"Worker started \(pid (\d+)\)", self.output())
        assert m, self.output()
        return int(m.group(1))

    def interrupt(self, timeout_s: float = 90.0) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self._out.close()
            if self.proc.poll() is None:
                self.proc.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def _counts(data_dir: Path) -> dict[str, int]:
    database = Database(f"sqlite:///{(data_dir / 'rlhf.db').resolve()}")
    try:
        with database.session() as db:
            demo = db.scalar(select(PromptSet).where(PromptSet.name == "demo"))
            return {
                "admins": db.scalar(select(func.count(User.id)).where(User.role == "admin")) or 0,
                "users": db.scalar(select(func.count(User.id))) or 0,
                "policies": db.scalar(select(func.count(Policy.id))) or 0,
                "v0": db.scalar(select(func.count(Policy.id)).where(Policy.version == 0)) or 0,
                "deployed": db.scalar(select(func.count(Policy.id)).where(Policy.deployed.is_(True))) or 0,
                "sets": db.scalar(select(func.count(PromptSet.id))) or 0,
                "demo_prompts": (
                    db.scalar(select(func.count(Prompt.id)).where(Prompt.prompt_set_id == demo.id)) if demo else 0
                )
                or 0,
            }
    finally:
        database.dispose()


def test_rlhf_run_serves_samples_stops_and_restarts_idempotently(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = Started(data_dir, tmp_path / "first.log")
    try:
        first.wait_healthy()
        out = first.output()
        m = re.search(r"Admin user created: admin\s+password: (\S+)", out)
        assert m, out
        password = m.group(1)
        assert "Prompt set 'demo': created with 60 prompts" in out
        assert f"Open http://127.0.0.1:{first.port}/" in out
        worker_pid = first.worker_pid()

        login_page = httpx.get(f"{first.base}/login", timeout=5)
        assert login_page.status_code == 200
        assert 'name="password"' in login_page.text

        # The printed password logs in, and the admin sees the worker's completions for the demo set.
        with httpx.Client(base_url=first.base, timeout=10) as web:
            r = web.post("/login", data={"username": "admin", "password": password}, follow_redirects=False)
            assert r.status_code == 303, r.text
            sets = web.get("/api/v1/prompt-sets").json()
            demo = next(s for s in sets if s["name"] == "demo")
            assert (demo["k"], demo["overlap"]) == (4, 1)
            policies = web.get("/api/v1/policies").json()
            assert [(p["version"], p["deployed"]) for p in policies] == [(0, True)]
            deadline = time.monotonic() + 240
            rows: list[dict] = []
            while time.monotonic() < deadline and not rows:
                rows = web.get("/api/v1/completions", params={"prompt_set_id": demo["id"]}).json()
                if not rows:
                    assert first.proc.poll() is None, first.output()
                    time.sleep(1.0)
            assert rows, f"the worker wrote no completions for the demo set:\n{first.output()}"
            assert {r["policy_id"] for r in rows} == {policies[0]["id"]}

        assert first.interrupt() == 0, first.output()
        deadline = time.monotonic() + 30
        while _alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(worker_pid), "the worker outlived rlhf run"
        out = first.output()
        assert "Worker stopped (exit code 0)" in out, out
        assert "rlhf-studio stopped" in out
    finally:
        if first.proc.poll() is None:
            first.proc.kill()

    before = _counts(data_dir)
    assert before == {"admins": 1, "users": 1, "policies": 1, "v0": 1, "deployed": 1, "sets": 1, "demo_prompts": 60}
    with Database(f"sqlite:///{(data_dir / 'rlhf.db').resolve()}").session() as db:
        assert (db.scalar(select(func.count(Completion.id))) or 0) > 0

    second = Started(data_dir, tmp_path / "second.log")
    try:
        second.wait_healthy()
        out = second.output()
        assert "Admin user exists: admin" in out
        assert "password:" not in out
        assert "Policy v0: exists" in out
        assert "Prompt set 'demo': exists (60 prompts)" in out
        worker_pid = second.worker_pid()
        assert second.interrupt() == 0, second.output()
        assert not _alive(worker_pid) or _wait_gone(worker_pid)
    finally:
        if second.proc.poll() is None:
            second.proc.kill()
    assert _counts(data_dir) == before


def _wait_gone(pid: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_bootstrap_steps_are_idempotent(database: Database) -> None:
    """ensure_admin and ensure_demo_set (the service side of `rlhf run`) on both backends."""
    from app.services import bootstrap

    with database.session() as db:
        name, password = bootstrap.ensure_admin(db)
        ps, imported = bootstrap.ensure_demo_set(db, validation_fraction=0.1)
        assert (name, imported) == ("admin", 60) and password
        assert (ps.name, ps.k, ps.overlap, ps.demonstration_share) == ("demo", 4, 1, 0.25)
        assert ps.sampling["max_new_tokens"] == 64
    with database.session() as db:
        assert bootstrap.ensure_admin(db) == ("admin", None)
        again, imported = bootstrap.ensure_demo_set(db)
        assert (again.id, imported) == (ps.id, 0)
        prompts = db.scalars(select(Prompt).where(Prompt.prompt_set_id == ps.id)).all()
        assert len(prompts) == 60
        # the file's own splits are kept, and about a quarter of the prompts ask for a demonstration
        assert sum(p.split == "validation" for p in prompts) == 10
        assert 5 <= sum(p.wants_demonstration for p in prompts) <= 25

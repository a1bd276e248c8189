"""What one labeling cycle costs, without contention: one labeler, in process.

A cycle is POST /tasks/next + POST /tasks/{id}/ranking through the app (FastAPI's
TestClient, no HTTP server, no other load from this script) against PostgreSQL, on a set of
N prompts with the sampler's completions written beforehand (bench/load.py ``seed_scale``).
For each checkout (``--compare DIR`` first, then this one), on the same database with the
labeling work reset in between: the wall time per cycle, PostgreSQL's CPU per cycle (the
backends' /proc times), and the statements of a cycle with their time at the client,
slowest first. This is the floor under bench/load.py's figures, which add many labelers,
uvicorn and the load generator on the same cores.

    python bench/cycle_cost.py --prompts 50000 --compare ../before
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import load  # noqa: E402
from bench.report import machine_line, markdown_table  # noqa: E402

SECTION = "Cost of one cycle"


def measure(url: str, set_id: int, token: str, cycles: int) -> dict:
    """In this process (its app/ is the checkout measured): the cycle's costs."""
    import app as measured

    print(f"measuring {Path(measured.__file__).parent}", file=sys.stderr)
    from fastapi.testclient import TestClient
    from sqlalchemy import event

    from app.config import Settings
    from app.main import create_app

    load.reset_work(url)
    app = create_app(Settings(database_url=url, secret_key="bench-" * 6, webhook_deliver=False, gold_rate=0.0))
    times: dict[str, list[float]] = defaultdict(list)
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {token}"}

        def cycle() -> None:
            task = client.post("/api/v1/tasks/next", json={"prompt_set_id": set_id, "kind": "rank"}, headers=headers)
            assert task.status_code == 200, task.text
            body = {"ranking": [[c["id"]] for c in task.json()["completions"]]}
            r = client.post(f"/api/v1/tasks/{task.json()['id']}/ranking", json=body, headers=headers)
            assert r.status_code == 201, r.text

        for _ in range(20):  # warm: compiled statements, prepared plans
            cycle()

        def before(conn, cursor, statement, params, context, many) -> None:  # type: ignore[no-untyped-def]
            conn.info["t0"] = time.perf_counter()

        def after(conn, cursor, statement, params, context, many) -> None:  # type: ignore[no-untyped-def]
            times[" ".join(statement.split())[:90]].append(time.perf_counter() - conn.info["t0"])

        engine = app.state.db.engine
        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "after_cursor_execute", after)
        pids, pg0 = load.backend_cpu(url)
        t0 = time.perf_counter()
        for _ in range(cycles):
            cycle()
        wall = time.perf_counter() - t0
        _, pg1 = load.backend_cpu(url, pids)
    statements = sorted(((1000 * sum(v) / cycles, len(v) / cycles, k) for k, v in times.items()), reverse=True)
    return {
        "wall_ms": 1000 * wall / cycles,
        "pg_ms": 1000 * (pg1 - pg0) / cycles,
        "statements": round(sum(n for _, n, _ in statements), 1),
        "top": statements[:6],
    }


def run_checkout(app_dir: Path, url: str, set_id: int, token: str, cycles: int) -> dict:
    """``measure`` in a child process whose app/ comes from ``app_dir``."""
    # The checkout's app/ is imported first (cwd), then this checkout's bench/ as the package
    # ``bench``: bench/load.py puts this checkout on sys.path, but app is already bound.
    code = (
        "import json, sys, types\n"
        "import app, app.main\n"
        f"bench = types.ModuleType('bench'); bench.__path__ = [{str(REPO_ROOT / 'bench')!r}]\n"
        "sys.modules['bench'] = bench\n"
        "from bench.cycle_cost import measure\n"
        f"print('RESULT ' + json.dumps(measure({url!r}, {set_id}, {token!r}, {cycles})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=app_dir, check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(app_dir)}).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=50000)
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per checkout; the best is kept")
    parser.add_argument("--compare", default="", help="another checkout, measured first on the same database")
    parser.add_argument("--pg-url", default=load.BASE_PG)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    from app import migrate

    checkouts = ([("before", Path(args.compare).resolve())] if args.compare else []) + [("this", REPO_ROOT)]
    url = load.create_database(args.pg_url)
    try:
        migrate.upgrade(url)  # this checkout's schema: an older checkout ignores newer columns
        set_id, tokens, _ = load.seed_scale(url, 1, args.prompts, 4, 2)
        import psycopg

        with psycopg.connect(load._libpq(url), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for code, app_dir in checkouts:
                res = run_checkout(app_dir, url, set_id, tokens[0], args.cycles)
                print(f"[{code}] {res['wall_ms']:.1f} ms/cycle, PostgreSQL {res['pg_ms']:.2f} ms/cycle, "
                      f"{res['statements']} statements", flush=True)
                if code not in best or res["wall_ms"] < best[code]["wall_ms"]:
                    best[code] = res
    finally:
        load.drop_database(args.pg_url, url)
    rows = [[code, f"{r['wall_ms']:.1f}", f"{r['pg_ms']:.2f}", str(r["statements"])] for code, r in best.items()]
    top = [[code, f"{ms:.2f}", f"{n:g}", f"`{sql}`"] for code, r in best.items() for ms, n, sql in r["top"]]
    text = "\n\n".join([
        f"Measured {machine_line()}; one labeler, in process (FastAPI's TestClient: no HTTP server, no other load "
        f"from the benchmark), PostgreSQL, {args.prompts} prompts with K=4 ready completions each, overlap 2, "
        f"{args.cycles} cycles of POST /tasks/next + POST /tasks/{{id}}/ranking after 20 to warm up, the best of "
        f"{args.repeats} alternating runs per checkout on the same database. Wall ms = the whole cycle at the client "
        "(app, driver and database); PostgreSQL CPU = its backends' CPU time (/proc) per cycle. Command: "
        f"`python bench/cycle_cost.py --prompts {args.prompts}" + (f" --compare {args.compare}" if args.compare else "") + "`.",
        markdown_table(["code", "wall ms/cycle", "PostgreSQL CPU ms/cycle", "statements/cycle"], rows),
        "The slowest statements of a cycle (time at the client per cycle, executions per cycle):",
        markdown_table(["code", "ms/cycle", "per cycle", "statement"], top),
    ])
    print(text)
    if not args.no_docs:
        load.write_section(SECTION, text)


if __name__ == "__main__":
    main()

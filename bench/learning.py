"""Does a round learn with its defaults? The loop, measured on SmolLM2-135M.

Each scenario is a fresh installation (SQLite, its own data directory): ``rlhf serve``
and ``rlhf worker`` as subprocesses, a prompt set drawn from the demo prompts with the
set's default sampling, and simulated labelers (app/simulation) that rank through the
real HTTP API with a scripted preference. Rounds start with ``deploy: true`` and **no
config**: the defaults a user gets from "Start training round". Per round it records

* the preference's mean score over the policy's validation completions (the ones the
  sampler wrote for labeling), with its standard error;
* the win rate against v0 under the preference (pairs of completions of the same
  validation prompt, ties one half) with a Wilson interval;
* KL from v0 (the trainer's evaluation), the RM's held-out accuracy, what each gate
  decided and why, and the wall time of each stage.

After the rounds, simulated labelers judge v0 against the scenario's last deployed policy
in a blind evaluation (compare tasks through the API, a Bradley-Terry leaderboard), so the
human-style verdict sits beside the preference's own scores (``--no-evaluate`` skips it,
``--evaluate`` runs only it on finished scenarios).

It writes docs/learning.md (the tables between their markers; the discussion is kept),
docs/learning.csv and docs/learning.png.

    python bench/learning.py                       # the default matrix (CPU, about an hour per scenario)
    python bench/learning.py --scenarios concise,key_term --parallel 2 --threads 1
    python bench/learning.py --full                # adds labeler noise and DPO (for a GPU)
    python bench/learning.py --evaluate --scenarios concise   # the blind evaluation of a finished scenario
    python bench/learning.py --scenarios conversation --rounds 2 --no-evaluate --out /tmp/conv/learning.md

The ``conversation`` scenario runs on a conversation set (max_turns 2, branching 1): the
simulated labelers rank, continue and demonstrate (app/simulation/conversations.py), and its
figures are the preference's score of each policy's replies to the *second-turn* validation
contexts that existed after round 0's labeling pass (frozen there, so every policy version is
measured on the same contexts), with the seeds' (first-turn) replies beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.simulation.conversations import preference_prompt  # noqa: E402
from app.simulation.loop import Simulation, SimulationConfig  # noqa: E402
from bench.report import replace_marked  # noqa: E402
from app.simulation.preferences import load_preference  # noqa: E402
from trainer.gates import mean_interval, wilson_interval  # noqa: E402


@dataclass(frozen=True)
class Scenario:
    name: str
    preference: str
    flip_prob: float = 0.0
    stages: tuple[str, ...] | None = None  # None: the default sft, rm, ppo
    kind: str = "prompts"  # or "conversation": a conversation set, measured on its second turns
    max_turns: int = 2
    branching: int = 1

    @property
    def config(self) -> dict[str, Any]:
        return {}  # the defaults, always: this benchmark measures what a user gets


SCENARIOS = {
    "concise": Scenario("concise", "concise"),
    "key_term": Scenario("key_term", "key_term"),
    "concise_noise": Scenario("concise_noise", "concise", flip_prob=0.2),
    "concise_dpo": Scenario("concise_dpo", "concise", stages=("sft", "dpo")),
    "key_term_dpo": Scenario("key_term_dpo", "key_term", stages=("sft", "dpo")),
    "key_term_noise": Scenario("key_term_noise", "key_term", flip_prob=0.2),
    "conversation": Scenario("conversation", "concise", kind="conversation"),
}
DEFAULT = ["concise", "key_term", "concise_noise", "concise_dpo"]
FULL = [n for n, sc in SCENARIOS.items() if sc.kind == "prompts"]


@dataclass
class RoundFigures:
    scenario: str
    round: int
    policy: str
    score: float
    score_se: float
    completions: int
    win_vs_v0: float | None
    win_low: float | None
    win_high: float | None
    kl_from_v0: float | None
    rm_accuracy: float | None
    rm_gate: str
    deploy_gate: str
    deployed: bool
    stage_seconds: dict[str, float] = field(default_factory=dict)
    run_seconds: float | None = None
    note: str = ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rlhf(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, cwd=ROOT, input=stdin, text=True, capture_output=True,
        check=True,
    )
    return out.stdout


def _prompts(n: int, validation: int) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in (ROOT / "app/demo/demo_prompts.jsonl").read_text().splitlines() if line]
    val = [r for r in rows if r.get("split") == "validation"][:validation]
    train = [r for r in rows if r.get("split") != "validation"][: n - len(val)]
    return [{"prompt": r["prompt"], "split": "train"} for r in train] + [
        {"prompt": r["prompt"], "split": "validation"} for r in val
    ]


def _v0_dir(cache: Path) -> Path:
    """SmolLM2-135M-Instruct converted once (bootstrap), shared by every scenario."""
    target = cache / "smollm2-v0"
    if not (target / "config.json").is_file():
        env = {**os.environ, "RLHF_DATA_DIR": str(cache / "convert")}
        _rlhf(env, "db", "upgrade")
        _rlhf(env, "policy", "bootstrap")
        shutil.copytree(cache / "convert" / "artifacts" / "policies" / "v0", target)
    return target


def _scenario_env(work: Path, args: argparse.Namespace) -> dict[str, str]:
    return {
        **os.environ, "RLHF_DATA_DIR": str(work / "data"), "RLHF_TORCH_THREADS": str(args.threads),
        "RLHF_SAMPLER_BATCH_SIZE": str(args.sampler_batch), "PYTHONUNBUFFERED": "1",
        # fewer malloc arenas: the worker's threads (sampler, heartbeat, round) otherwise keep
        # gigabytes of freed memory each, and two scenarios at once fill a 24 GiB machine
        "MALLOC_ARENA_MAX": "2",
    }


@contextlib.contextmanager
def _service(env: dict[str, str], work: Path, tag: str = "") -> Iterator[str]:
    """``rlhf serve`` and ``rlhf worker`` on the scenario's data directory; yields the URL."""
    import httpx

    port = _free_port()
    logs = (work / f"server{tag}.log").open("w"), (work / f"worker{tag}.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env, cwd=ROOT,
                              stdout=logs[0], stderr=subprocess.STDOUT, start_new_session=True)
    worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=env, cwd=ROOT,
                              stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield url
    finally:
        for proc in (worker, server):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
        for f in logs:
            f.close()


def run_scenario(sc: Scenario, args: argparse.Namespace, v0: Path, log) -> list[RoundFigures]:  # type: ignore[no-untyped-def]
    work = Path(args.work) / sc.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = _scenario_env(work, args)
    _rlhf(env, "db", "upgrade")
    _rlhf(env, "policy", "bootstrap", "--base", str(v0))
    _rlhf(env, "users", "create", "benchadmin", "--role", "admin", stdin="bench-admin-password\nbench-admin-password\n")
    token = _rlhf(env, "tokens", "create", "benchadmin").strip().splitlines()[-1]
    started = time.monotonic()
    with _service(env, work) as url:
        import httpx

        headers = {"Authorization": f"Bearer {token}"}
        body = {"name": "bench", "k": 4, "overlap": 1, "demonstration_share": args.demonstration_share,
                "sampling": {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": args.max_new_tokens}}
        if sc.kind == "conversation":
            body |= {"kind": "conversation", "conversation": {"max_turns": sc.max_turns, "branching": sc.branching}}
        set_id = httpx.post(f"{url}/api/v1/prompt-sets", json=body, headers=headers, timeout=30).raise_for_status().json()["id"]
        httpx.post(f"{url}/api/v1/prompt-sets/{set_id}/prompts", json={"prompts": _prompts(args.prompts, args.validation)},
                   headers=headers, timeout=60).raise_for_status()
        cfg = SimulationConfig(
            url=url, token=token, prompt_set="bench", labelers=args.labelers, rounds=args.rounds,
            preference=sc.preference, demonstrations=args.demonstrations, flip_prob=sc.flip_prob, seed=args.seed,
            out_dir=work / "sim", train_config=sc.config, idle_timeout_s=1800, round_timeout_s=4 * 3600,
        )
        sim = Simulation(cfg, progress=lambda m: log(f"[{sc.name}] {m}"))
        if sc.stages is not None:

            def with_stages(ids, deploy=True, config=None):  # type: ignore[no-untyped-def]
                body = {"prompt_set_ids": ids, "deploy": deploy, "config": config or {}, "stages": list(sc.stages)}
                return sim.admin.post("/training/rounds", body).json()["run_id"]

            sim.admin.start_round = with_stages  # type: ignore[method-assign]
        frozen: set[int] = set()
        if sc.kind == "conversation":
            first_pass = sim.label_pass

            def label_pass(round_no: int, policy_id: int) -> tuple[int, int]:
                out = first_pass(round_no, policy_id)
                if round_no == 0:  # the second-turn validation contexts every policy is measured on
                    frozen.update(frozen_contexts(sim.contexts, set(sim._validation(policy_id)), turn=2))
                    log(f"[{sc.name}] {len(frozen)} second-turn validation contexts frozen: {sorted(frozen)}")
                return out

            sim.label_pass = label_pass  # type: ignore[method-assign]
        try:
            rows = sim.run()
        finally:
            if sc.kind == "conversation":
                figures = conversation_figures(sc, sim.rows, sim._validation, sim.runs, sim.contexts, frozen)
            else:
                figures = _figures(sc, sim, sim.rows)
            sim.close()
        del rows
        log(f"[{sc.name}] done in {(time.monotonic() - started) / 60:.1f} min")
        return figures


@dataclass
class EvaluationFigures:
    """A blind evaluation of v0 against a scenario's last deployed policy by simulated labelers."""

    scenario: str
    policies: list[str]
    comparisons: int
    ratings: dict[str, tuple[float, float, float]]  # version -> (rating, low, high)
    win_rate: float | None  # the last policy's head-to-head win rate against v0
    win_low: float | None
    win_high: float | None
    mean_scores: dict[str, float]  # version -> the preference's mean over the compared samples
    agrees: bool


def evaluate_scenario(sc: Scenario, args: argparse.Namespace, log) -> EvaluationFigures | None:  # type: ignore[no-untyped-def]
    """Start the scenario's service again and let simulated labelers judge v0 against its
    last deployed policy blind, through the compare tasks (issue: human evaluation)."""
    from sqlalchemy import select

    from app.db import Database
    from app.models import Policy, TrainingRun
    from app.simulation.compare import simulate_evaluation

    work = Path(args.work) / sc.name
    database = Database(f"sqlite:///{work / 'data' / 'rlhf.db'}")
    with database.session() as db:
        policies = list(db.scalars(select(Policy).order_by(Policy.version)))
        served = [p for p in policies if p.version == 0 or p.deployed_at is not None]
        # a round the benchmark was stopped in: the worker below must not take it up again
        unfinished = list(db.scalars(select(TrainingRun.id).where(TrainingRun.finished_at.is_(None))))
    database.dispose()
    if len(served) < 2:
        log(f"[{sc.name}] evaluation: no policy beyond v0 was deployed")
        return None
    first, last = served[0], served[-1]
    env = _scenario_env(work, args)
    _rlhf(env, "db", "upgrade")  # a scenario run by an older checkout
    for run_id in unfinished:
        _rlhf(env, "train", "cancel", str(run_id))
    token = _rlhf(env, "tokens", "create", "benchadmin").strip().splitlines()[-1]
    with _service(env, work, tag="-eval") as url:
        log(f"[{sc.name}] evaluation: v{first.version} against v{last.version}")
        result = simulate_evaluation(url, token, [first.id, last.id], "bench", labelers=args.labelers,
                                     preference=sc.preference, flip_prob=sc.flip_prob, seed=args.seed,
                                     per_pair=args.eval_per_pair, timeout_s=3600)
    board = result["leaderboard"]
    version = {first.id: f"v{first.version}", last.id: f"v{last.version}"}
    ratings = {version[r["policy_id"]]: (r["rating"], *(r["rating_interval"] or (math.nan, math.nan)))
               for r in board["policies"] if r["policy_id"] in version}
    win = low = high = None
    for r in board["pairs"]:  # one row per pair, in either orientation
        if {r["policy_id"], r["opponent_id"]} == {first.id, last.id} and r["win_rate"] is not None:
            win, (low, high) = r["win_rate"], r["win_rate_interval"]
            if r["policy_id"] == first.id:  # the last policy's side of it
                win, low, high = 1 - win, 1 - high, 1 - low
    return EvaluationFigures(
        scenario=sc.name, policies=[version[first.id], version[last.id]], comparisons=int(board["comparisons"]),
        ratings=ratings, win_rate=win, win_low=low, win_high=high,
        mean_scores={version[int(pid)]: float(v["mean_score"]) for pid, v in result["preference_scores"].items()},
        agrees=bool(result["agrees"]),
    )


def frozen_contexts(contexts: dict[int, Any], validation: set[int], turn: int = 2) -> set[int]:
    """The validation contexts of user turn ``turn`` among ``contexts`` (prompt id -> .turn)."""
    return {pid for pid, c in contexts.items() if c.turn == turn and pid in validation}


def conversation_figures(
    sc: Scenario, rows: list[Any], samples_of: Any, runs: list[dict[str, Any]], contexts: dict[int, Any],
    frozen: set[int],
) -> list[RoundFigures]:
    """A conversation scenario's figures: on the frozen second-turn validation contexts
    (scenario "<name> turn 2"), then on the seeds' validation replies ("<name> turn 1")."""
    from dataclasses import replace

    seeds = {pid for pid, c in contexts.items() if c.turn == 1}

    def only(ids: set[int]) -> Any:
        return lambda pid: {k: v for k, v in samples_of(pid).items() if k in ids}

    return (compute_figures(replace(sc, name=f"{sc.name} turn 2"), rows, only(frozen), runs)
            + compute_figures(replace(sc, name=f"{sc.name} turn 1"), rows, only(seeds), runs))


def _figures(sc: Scenario, sim: Simulation, rows: list[Any]) -> list[RoundFigures]:
    return compute_figures(sc, rows, sim._validation, sim.runs)


def compute_figures(
    sc: Scenario, rows: list[Any], samples_of: Any, runs: list[dict[str, Any]]
) -> list[RoundFigures]:
    """Figures per labeled policy (``rows``: policy_id, policy_version, kl_from_v0, note),
    from its validation samples (``samples_of(policy_id) -> {prompt_id: [{prompt, text}]}``)
    and the training runs in order (API shape: metrics, started_at, finished_at)."""
    preference = load_preference(sc.preference)
    out: list[RoundFigures] = []
    v0_samples = samples_of(rows[0].policy_id) if rows else {}
    for i, row in enumerate(rows):
        samples = samples_of(row.policy_id)
        scores = [preference(c["prompt"], c["text"]) for cs in samples.values() for c in cs]
        mean, low, _ = mean_interval(scores)
        se = (mean - low) / 1.96 if scores and math.isfinite(low) else float("nan")
        win = low_w = high_w = None
        if i > 0:
            wins = n = 0.0
            for prompt_id, news in samples.items():
                for new in news:
                    for old in v0_samples.get(prompt_id, []):
                        a, b = preference(new["prompt"], new["text"]), preference(old["prompt"], old["text"])
                        wins += 1.0 if a > b else 0.5 if a == b else 0.0
                        n += 1
            if n:
                win = wins / n
                # pairs share samples: the interval counts one trial per new completion
                low_w, high_w = wilson_interval(win * len(scores), len(scores))
        run = runs[i - 1] if i > 0 and i - 1 < len(runs) else None
        out.append(_row_figures(sc, i, row, mean, se, len(scores), win, low_w, high_w, run))
    # A run that ended the loop without deploying leaves a last row without a new policy.
    if len(runs) >= len(rows) and runs and not (runs[len(rows) - 1].get("metrics") or {}).get("deployed"):
        run = runs[len(rows) - 1]
        out.append(_row_figures(sc, len(rows), None, math.nan, math.nan, 0, None, None, None, run))
    return out


def figures_from_work(sc: Scenario, work: Path) -> list[RoundFigures]:
    """The same figures read straight from a scenario's database: for a run that was
    stopped (or is still going), every finished round is reported."""
    from types import SimpleNamespace

    from sqlalchemy import select

    from app.db import Database
    from app.models import Completion, ConversationNode, Policy, Prompt, TrainingRun

    database = Database(f"sqlite:///{work / 'data' / 'rlhf.db'}")
    with database.session() as db:
        first_run = db.scalar(select(TrainingRun).order_by(TrainingRun.id).limit(1))
        contexts: dict[int, Any] = {}
        for node in db.scalars(select(ConversationNode).where(ConversationNode.role == "user")):
            # frozen after round 0's pass: the contexts written before the first round started
            if node.turn == 1 or first_run is None or node.created_at <= first_run.created_at:
                contexts[node.prompt_id] = SimpleNamespace(turn=node.turn)
        finished = [r for r in db.scalars(select(TrainingRun).order_by(TrainingRun.id)) if r.finished_at]
        runs = [{"metrics": r.metrics or {}, "policy_id": r.policy_id, "started_at": r.started_at.isoformat(),
                 "finished_at": r.finished_at.isoformat()} for r in finished]
        by_id = {p.id: p for p in db.scalars(select(Policy))}
        chain = [next(p for p in by_id.values() if p.version == 0)]
        for run in runs:
            policy = by_id.get(run["policy_id"]) if run["metrics"].get("deployed") else None
            if policy is None:
                break
            chain.append(policy)
        labeled = {pid for (pid,) in db.execute(select(Completion.policy_id).distinct())}
        chain = [p for p in chain if p.id in labeled]
        rows = [SimpleNamespace(policy_id=p.id, policy_version=p.version, note="",
                                kl_from_v0=(p.metrics or {}).get("kl_from_v0", 0.0 if p.version == 0 else None))
                for p in chain]
        samples: dict[int, dict[int, list[dict[str, str]]]] = {}
        for pid, prompt_id, prompt, messages, text in db.execute(
            select(Completion.policy_id, Completion.prompt_id, Prompt.text, Prompt.messages, Completion.text)
            .join(Prompt, Prompt.id == Completion.prompt_id).where(Prompt.split == "validation")
        ):
            if messages:  # a chat context: the preference sees its user turns (app/simulation/conversations.py)
                prompt = preference_prompt({"prompt": prompt or "", "messages": messages})
            samples.setdefault(pid, {}).setdefault(prompt_id, []).append({"prompt": prompt or "", "text": text})
    database.dispose()
    samples_of = lambda pid: samples.get(pid, {})  # noqa: E731
    if sc.kind == "conversation":
        validation = {k for by_prompt in samples.values() for k in by_prompt}
        frozen = frozen_contexts(contexts, validation, turn=2)
        return conversation_figures(sc, rows, samples_of, runs[: max(0, len(rows))], contexts, frozen)
    return compute_figures(sc, rows, samples_of, runs[: max(0, len(rows))])


def _row_figures(sc, i, row, mean, se, n, win, low, high, run) -> RoundFigures:  # type: ignore[no-untyped-def]
    metrics = (run or {}).get("metrics") or {}
    found = metrics.get("gates") or {}
    rm_gate = found.get("rm") or {}
    deploy_gate = found.get("deploy") or {}
    rm_text = ("pass" if rm_gate.get("passed") else "fail") + (
        f" ({rm_gate['low']:.2f}-{rm_gate['high']:.2f}, n={rm_gate.get('n')})" if rm_gate.get("low") is not None else ""
    ) if rm_gate else "-"
    checks = deploy_gate.get("checks") or []
    deploy_text = "-" if not deploy_gate else ("pass" if deploy_gate.get("passed") else "refused: " + "; ".join(
        c.get("name", "") for c in checks if not c.get("passed")))
    seconds = {s: float((metrics.get(s) or {}).get("seconds") or 0.0) for s in ("sft", "rm", "ppo", "dpo")
               if metrics.get(s)}
    run_seconds = None
    if run and run.get("started_at") and run.get("finished_at"):
        from datetime import datetime

        run_seconds = (datetime.fromisoformat(run["finished_at"]) - datetime.fromisoformat(run["started_at"])).total_seconds()
    rm = metrics.get("rm") or {}
    return RoundFigures(
        scenario=sc.name, round=i, policy=f"v{row.policy_version}" if row else "(not deployed)", score=mean,
        score_se=se, completions=n, win_vs_v0=win, win_low=low, win_high=high,
        kl_from_v0=row.kl_from_v0 if row else None, rm_accuracy=rm.get("val_accuracy"),
        rm_gate=rm_text, deploy_gate=deploy_text, deployed=bool(metrics.get("deployed")), stage_seconds=seconds,
        run_seconds=run_seconds, note=(row.note if row else metrics.get("summary", "")),
    )


def _f(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


RESULTS_BEGIN = "<!-- bench/learning.py results: begin -->"
RESULTS_END = "<!-- bench/learning.py results: end -->"


def results_table(figures: list[RoundFigures]) -> str:
    lines = ["| scenario | round | policy | score (± se) | win vs v0 [95% CI] | KL from v0 | RM held-out acc | RM gate | deploy gate | training s (sft/rm/ppo-or-dpo) | run s |",
             "| --- | ---: | --- | --- | --- | ---: | ---: | --- | --- | --- | ---: |"]
    for f in figures:
        win = "-" if f.win_vs_v0 is None else f"{f.win_vs_v0:.2f} [{f.win_low:.2f}, {f.win_high:.2f}]"
        secs = "/".join(f"{f.stage_seconds[s]:.0f}" for s in ("sft", "rm", "ppo", "dpo") if s in f.stage_seconds) or "-"
        lines.append(
            f"| {f.scenario} | {f.round} | {f.policy} | {_f(f.score)} ± {_f(f.score_se, '.3f')} | {win} | "
            f"{_f(f.kl_from_v0, '.2f')} | {_f(f.rm_accuracy, '.2f')} | {f.rm_gate} | {f.deploy_gate} | {secs} | "
            f"{_f(f.run_seconds, '.0f')} |"
        )
    notes = [f"- {f.scenario}, round {f.round}: {f.note}" for f in figures if f.note]
    return "\n".join(lines + ([""] + notes if notes else []))


EVAL_BEGIN = "<!-- bench/learning.py evaluation: begin -->"
EVAL_END = "<!-- bench/learning.py evaluation: end -->"


def evaluation_table(evals: list[EvaluationFigures]) -> str:
    lines = ["| scenario | policies | comparisons | Bradley-Terry rating [95% CI] | last vs v0 win rate [95% CI] | "
             "preference mean of the compared samples | leaderboard order = score order |",
             "| --- | --- | ---: | --- | --- | --- | --- |"]
    for e in evals:
        ratings = "; ".join(f"{v} {r:.0f} [{lo:.0f}, {hi:.0f}]" for v, (r, lo, hi) in e.ratings.items())
        win = "-" if e.win_rate is None else f"{e.win_rate:.2f} [{e.win_low:.2f}, {e.win_high:.2f}]"
        scores = "; ".join(f"{v} {m:.3f}" for v, m in e.mean_scores.items())
        lines.append(f"| {e.scenario} | {' vs '.join(e.policies)} | {e.comparisons} | {ratings} | {win} | {scores} | "
                     f"{'yes' if e.agrees else 'no'} |")
    return "\n".join(lines)


def write_evaluations(evals: list[EvaluationFigures], out_md: Path, header: str) -> None:
    """The evaluation table into ``out_md`` between its markers (appended when missing)."""
    if not out_md.exists():
        out_md.write_text("# Learning benchmark\n")
    replace_marked(out_md, EVAL_BEGIN, EVAL_END, f"{header}\n\n{evaluation_table(evals)}",
                   heading="Human-style evaluation of the last policy")


def read_csv(path: Path) -> list[RoundFigures]:
    """Figures back from a CSV this benchmark wrote (``--render``)."""
    def num(v: str) -> float | None:
        return None if v in ("", "None") else float(v)

    out = []
    with path.open() as fh:
        for row in csv.DictReader(fh):
            out.append(RoundFigures(
                scenario=row["scenario"], round=int(row["round"]), policy=row["policy"], score=float(row["score"]),
                score_se=float(row["score_se"]), completions=int(row["completions"]), win_vs_v0=num(row["win_vs_v0"]),
                win_low=num(row["win_low"]), win_high=num(row["win_high"]), kl_from_v0=num(row["kl_from_v0"]),
                rm_accuracy=num(row["rm_accuracy"]), rm_gate=row["rm_gate"], deploy_gate=row["deploy_gate"],
                deployed=row["deployed"] == "True", stage_seconds=json.loads(row["stage_seconds"] or "{}"),
                run_seconds=num(row["run_seconds"]), note=row["note"],
            ))
    return out


def write_outputs(figures: list[RoundFigures], out_md: Path, header: str) -> None:
    """The CSV and the plot beside ``out_md``, and the table into ``out_md`` between the
    results markers (the rest of the page, its discussion, is kept)."""
    csv_path, png_path = out_md.with_suffix(".csv"), out_md.with_suffix(".png")
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(asdict(figures[0]).keys()) if figures else ["scenario"])
        w.writeheader()
        for f in figures:
            w.writerow({**asdict(f), "stage_seconds": json.dumps(f.stage_seconds)})
    if not out_md.exists():
        out_md.write_text("# Learning benchmark\n")
    replace_marked(out_md, RESULTS_BEGIN, RESULTS_END,
                   f"{header}\n\n{results_table(figures)}\n\n![score and win rate per round]({png_path.name})")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for name in dict.fromkeys(f.scenario for f in figures):
            rows = [f for f in figures if f.scenario == name and math.isfinite(f.score)]
            ax1.errorbar([r.round for r in rows], [r.score for r in rows], yerr=[1.96 * r.score_se for r in rows],
                         marker="o", capsize=3, label=name)
            wins = [r for r in rows if r.win_vs_v0 is not None]
            ax2.plot([r.round for r in wins], [r.win_vs_v0 for r in wins], marker="o", label=name)
        ax1.set(xlabel="round", ylabel="preference score (validation)", title="score, 95% CI")
        ax2.axhline(0.5, color="grey", lw=0.8)
        ax2.set(xlabel="round", ylabel="win rate vs v0", title="win rate against v0")
        ax1.legend()
        fig.tight_layout()
        fig.savefig(png_path, dpi=110)
    except ImportError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(DEFAULT), help=f"comma-separated, from {', '.join(SCENARIOS)}")
    parser.add_argument("--full", action="store_true", help="every scenario (noise and DPO for both preferences)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=32, help="prompts in the set (train + validation)")
    parser.add_argument("--validation", type=int, default=8, help="of which validation prompts")
    parser.add_argument("--labelers", type=int, default=3)
    parser.add_argument("--demonstrations", type=int, default=8, help="demonstrations written per round")
    parser.add_argument("--demonstration-share", type=float, default=0.25)
    parser.add_argument("--max-new-tokens", type=int, default=64, help="the set's sampling max_new_tokens")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    parser.add_argument("--sampler-batch", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=1, help="scenarios at once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/rlhf-learning")
    parser.add_argument("--out", default=str(ROOT / "docs" / "learning.md"))
    parser.add_argument("--render", metavar="CSV", help="only redraw the table and plot from a CSV of an earlier run")
    parser.add_argument("--header", default="", help="with --render / --from-work: the line above the table")
    parser.add_argument("--from-work", action="store_true",
                        help="report the finished rounds of the scenarios under --work (a stopped or running benchmark)")
    parser.add_argument("--evaluate", action="store_true",
                        help="only the blind evaluation (v0 against the last deployed policy, simulated labelers) of "
                             "the finished scenarios under --work")
    parser.add_argument("--no-evaluate", action="store_true", help="skip the blind evaluation after the rounds")
    parser.add_argument("--eval-per-pair", type=int, default=4,
                        help="comparisons per validation prompt in the blind evaluation")
    args = parser.parse_args()
    if args.render:
        write_outputs(read_csv(Path(args.render)), Path(args.out), args.header)
        return
    if args.from_work:
        names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
        found = [f for n in names if (Path(args.work) / n / "data").is_dir()
                 for f in figures_from_work(SCENARIOS[n], Path(args.work) / n)]
        write_outputs(found, Path(args.out), args.header)
        for f in found:
            print(f)
        return
    names = FULL if args.full else [s.strip() for s in args.scenarios.split(",") if s.strip()]
    scenarios = [SCENARIOS[n] for n in names]
    Path(args.work).mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    eval_header = (f"bench/learning.py, {time.strftime('%Y-%m-%d')}: a blind evaluation per scenario (compare tasks "
                   f"through the API, {args.labelers} simulated labelers with the scenario's preference and noise, "
                   f"{args.eval_per_pair} comparisons per validation prompt, ties count half).")
    if args.evaluate:
        evals = [e for sc in scenarios if (Path(args.work) / sc.name / "data").is_dir()
                 for e in [evaluate_scenario(sc, args, log)] if e is not None]
        write_evaluations(evals, Path(args.out), eval_header)
        print(evaluation_table(evals))
        return

    v0 = _v0_dir(Path(args.work))
    figures: list[RoundFigures] = []
    header = (f"bench/learning.py, {time.strftime('%Y-%m-%d')}: {args.prompts} prompts "
              f"({args.validation} validation), K=4, {args.labelers} labelers, {args.demonstrations} demonstrations a "
              f"round, sampling temperature 0.7 / top_p 0.95 / {args.max_new_tokens} new tokens, default round config, "
              f"{args.threads} torch thread(s) per worker, {args.parallel} scenario(s) at once.")

    def one(sc: Scenario) -> list[RoundFigures]:
        try:
            return run_scenario(sc, args, v0, log)
        except Exception as exc:  # noqa: BLE001 - one failed scenario still lets the others report
            log(f"[{sc.name}] failed: {type(exc).__name__}: {exc}")
            return []

    def evaluated(sc: Scenario) -> EvaluationFigures | None:
        try:
            return None if args.no_evaluate else evaluate_scenario(sc, args, log)
        except Exception as exc:  # noqa: BLE001 - the rounds' figures are reported either way
            log(f"[{sc.name}] evaluation failed: {type(exc).__name__}: {exc}")
            return None

    evals: list[EvaluationFigures] = []
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        for result, ev in pool.map(lambda sc: (one(sc), evaluated(sc)), scenarios):
            figures.extend(result)
            evals.extend([ev] if ev else [])
            if figures:
                write_outputs(figures, Path(args.out), header)
            if evals:
                write_evaluations(evals, Path(args.out), eval_header)
    for f in figures:
        print(f)


if __name__ == "__main__":
    main()

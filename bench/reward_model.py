"""Which reward-model settings generalise from a day's rankings? Measured on SmolLM2-135M.

The learning benchmark (bench/learning.py) judges a whole round; this one isolates the
reward model, the stage that decides whether PPO may run. It samples K completions of
every demo prompt with v0 (as bench/learning.py's prompt set: temperature 0.7, top-p 0.95, 64 tokens), ranks them with a simulated
preference, trains the RM on ``--train`` rankings with ``--val`` more for early stopping
(as a round does with its validation split), and measures pairwise accuracy on all the
other prompts' rankings: far more held-out pairs than a round has, so that settings can
be told apart. Each variant is an ``RMConfig`` override; the default is the first row.

    python bench/reward_model.py                          # concise and key_term, the variants below
    python bench/reward_model.py --preferences concise --variants default,top4

It writes its table between markers in docs/learning.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.simulation.preferences import load_preference, rank_by_preference  # noqa: E402
from bench.report import replace_marked  # noqa: E402
from trainer.gates import wilson_interval  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "top8": {"trainable_layers": 8},
    "top4": {"trainable_layers": 4},
    "top2": {"trainable_layers": 2},
    "head": {"trainable_layers": 0, "lr": 1e-3},
    "lr1e-5": {"lr": 1e-5},
}
MARK_BEGIN = "<!-- bench/reward_model.py results: begin -->"
MARK_END = "<!-- bench/reward_model.py results: end -->"


def _samples(v0: Path, prompts: list[str], k: int, seed: int, cache: Path) -> list[list[str]]:
    """K completions per prompt from v0, sampled as the learning benchmark's prompt set does (cached)."""
    if cache.is_file():
        return json.loads(cache.read_text())
    from trainer.generation import GenRequest, SamplingParams, TransformersGenerator

    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=64)  # as bench/learning.py's prompt set
    gen = TransformersGenerator.from_dir(v0, seed=seed, max_batch_size=32)
    results = gen.generate([GenRequest(key=i, prompt=p, k=k, params=params) for i, p in enumerate(prompts)])
    out: list[list[str]] = [[] for _ in prompts]
    for r in results:
        out[r.key].append(r.text)
    cache.write_text(json.dumps(out))
    return out


def _rankings(preference_name: str, prompts: list[str], samples: list[list[str]]):  # type: ignore[no-untyped-def]
    from trainer.stages.reward import RankingExample

    pref = load_preference(preference_name)
    out = []
    for prompt, comps in zip(prompts, samples):
        groups = rank_by_preference(pref, prompt, list(enumerate(comps)))
        out.append(RankingExample(prompt=prompt, messages=None, completions=comps, ranking=groups))
    return out


def run_variant(v0: Path, name: str, train, val, test, seed: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    from trainer.config import RMConfig
    from trainer.stages.reward import RewardModel, evaluate_rankings, train_reward_model
    from trainer.stages.accel import get_accelerator

    config = dataclasses.replace(RMConfig(seed=seed), **VARIANTS[name])
    tokenizer = AutoTokenizer.from_pretrained(str(v0))
    rm = RewardModel.from_policy_dir(v0)
    start = time.perf_counter()
    metrics = train_reward_model(rm, tokenizer, train, val, config)
    seconds = time.perf_counter() - start
    held = evaluate_rankings(rm, tokenizer, test, config, get_accelerator(None))
    lo, hi = wilson_interval(held["accuracy"] * held["pairs"], held["pairs"])
    return {
        "variant": name, "overrides": VARIANTS[name], "test_accuracy": held["accuracy"], "test_pairs": held["pairs"],
        "ci": (lo, hi), "val_accuracy": metrics.get("val_accuracy"), "train_accuracy": metrics["train_accuracy"],
        "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"], "steps": metrics["steps"],
        "seconds": seconds,
    }


def render(rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, "", "| preference | variant | overrides | test acc [95% CI] (pairs) | val acc | train acc | "
             "epoch kept / run | steps | RM s |", "| --- | --- | --- | --- | ---: | ---: | --- | ---: | ---: |"]
    for r in rows:
        lo, hi = r["ci"]
        val = "-" if r["val_accuracy"] is None else f"{r['val_accuracy']:.2f}"
        lines.append(
            f"| {r['preference']} | {r['variant']} | `{json.dumps(r['overrides'])}` | {r['test_accuracy']:.3f} "
            f"[{lo:.2f}, {hi:.2f}] ({int(r['test_pairs'])}) | {val} | {r['train_accuracy']:.2f} | "
            f"{int(r['best_epoch'])} / {int(r['epochs_run'])} | {int(r['steps'])} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def write_doc(doc: Path, table: str) -> None:
    replace_marked(doc, MARK_BEGIN, MARK_END, table, heading="The reward model alone (bench/reward_model.py)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preferences", default="concise,key_term")
    ap.add_argument("--variants", default="default,top4,head")
    ap.add_argument("--train", type=int, default=24, help="training rankings (a round's train split)")
    ap.add_argument("--val", type=int, default=8, help="rankings for early stopping (a round's validation split)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", default="/tmp/rlhf-rm-bench")
    ap.add_argument("--doc", default=str(ROOT / "docs/learning.md"))
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from bench.learning import _v0_dir

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    v0 = _v0_dir(work)
    rows_all = [json.loads(line) for line in (ROOT / "app/demo/demo_prompts.jsonl").read_text().splitlines() if line]
    prompts = [r["prompt"] for r in rows_all]
    t0 = time.perf_counter()
    samples = _samples(v0, prompts, args.k, args.seed, work / f"samples_k{args.k}_s{args.seed}.json")
    print(f"samples: {len(prompts)} prompts x {args.k} ({time.perf_counter() - t0:.0f} s)", flush=True)
    results: list[dict[str, Any]] = []
    for pref in args.preferences.split(","):
        ranked = _rankings(pref, prompts, samples)
        train, val, test = ranked[: args.train], ranked[args.train : args.train + args.val], ranked[args.train + args.val :]
        for name in args.variants.split(","):
            row = {"preference": pref, **run_variant(v0, name, train, val, test, args.seed)}
            results.append(row)
            print(json.dumps(row), flush=True)
            (work / "results.jsonl").open("a").write(json.dumps(row) + "\n")
    header = (
        f"bench/reward_model.py, {time.strftime('%Y-%m-%d')}, SmolLM2-135M-Instruct v0 fp32, "
        f"{os.cpu_count()}-core CPU: {len(prompts)} demo prompts x K={args.k} sampled once by v0; RM trained on "
        f"{args.train} rankings, early-stopped on {args.val}, tested on the other {len(prompts) - args.train - args.val} "
        "prompts' rankings (ties dropped)."
    )
    table = render(results, header)
    print(table)
    if not args.no_doc:
        write_doc(Path(args.doc), table)


if __name__ == "__main__":
    main()

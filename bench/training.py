"""Training throughput of the stages in trainer/stages, side by side with TRL.

Same machine, same run, same model and data for each pair of rows:

* SFT: supervised tokens/s of ``train_sft`` vs ``trl.SFTTrainer`` (prompt-completion data,
  loss on the completion only in both);
* RM: comparisons/s of ``train_reward_model`` in K-way mode (each of a ranking's K
  completions encoded once) vs its pairwise mode (2 sequences per pair, the layout of a
  pairwise trainer) vs ``trl.RewardTrainer`` on the same comparisons in
  prompt/chosen/rejected form;
* PPO: episodes/s of ``train_ppo`` vs TRL 1.12's ``trl.experimental.ppo.PPOTrainer``
  (removed from TRL in 1.13). That one runs in a subprocess with a private copy of
  trl 1.12 first on ``PYTHONPATH``; install it once with
  ``pip install --no-deps --target .bench-trl112 trl==1.12.0``.

Prints a table and rewrites the "## Training" section of docs/benchmarks.md (other
sections are kept).

    python bench/training.py --model tiny          # ~1 minute
    python bench/training.py --model smollm2       # ~10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

logger = logging.getLogger("bench.training")

TRL112_DIR = REPO_ROOT / ".bench-trl112"
SECTION = "Training"
STAGE_NAMES = {"sft": "SFT", "rm": "RM", "ppo": "PPO"}

from bench.prompts import PROMPTS  # noqa: E402
WORDS = (
    "the a model answer reward human ranking policy sample token sky blue green sea poem "
    "leaf autumn quick brown fox jumps over lazy dog because light scatters water egg yolk "
    "planet mars venus earth jupiter bakery croissant email meeting focus study recursion"
).split()


@dataclass
class Size:
    """How much work each measurement does (kept small: this is a CPU benchmark)."""

    sft_examples: int
    sft_batch: int
    sft_words: tuple[int, int]
    rm_rankings: int
    rm_per_batch: int
    rm_words: tuple[int, int]
    k: int
    ppo_iterations: int
    ppo_prompts: int
    ppo_minibatch: int
    ppo_new_tokens: int
    ppo_epochs: int
    max_length: int
    threads: int
    repeats: int


SIZES = {
    "tiny": Size(64, 8, (20, 40), 32, 4, (10, 30), 4, 3, 16, 8, 24, 4, 256, 1, 3),
    # One PPO epoch here: a PPO epoch over 16 x ~85 tokens through policy + value model is
    # ~9 TFLOP at 4 epochs, minutes per iteration on 2 cores; throughput ratios are the point.
    "smollm2": Size(24, 8, (20, 40), 12, 4, (10, 25), 4, 2, 16, 8, 48, 1, 256, os.cpu_count() or 2, 1),
}


@dataclass
class Row:
    stage: str
    impl: str
    work: str
    seconds: float
    rate: float
    unit: str
    notes: str = ""
    extra: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------ data


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize() + "."


def make_demos(n: int, words: tuple[int, int], seed: int = 0):
    from trainer.stages.sft import SFTExample

    rng = random.Random(seed)
    return [SFTExample(PROMPTS[i % len(PROMPTS)], None, sentence(rng, *words)) for i in range(n)]


def make_rankings(n: int, k: int, words: tuple[int, int], seed: int = 1):
    from trainer.stages.reward import RankingExample

    rng = random.Random(seed)
    out = []
    for i in range(n):
        completions = [sentence(rng, *words) for _ in range(k)]
        order = list(range(k))
        rng.shuffle(order)
        out.append(RankingExample(PROMPTS[i % len(PROMPTS)], None, completions, [[j] for j in order]))
    return out


# ------------------------------------------------------------------------ models


def prepare_model_dir(name: str, cache: Path) -> Path | None:
    if name == "tiny":
        from trainer.tiny import build_tiny_policy

        out = cache / "tiny-policy"
        if not (out / "config.json").exists():
            build_tiny_policy(out)
        return out
    try:
        from trainer.bootstrap import prepare_base
    except ImportError as exc:
        print(f"skipping smollm2: trainer.bootstrap.prepare_base is not available ({exc})")
        return None
    return prepare_base(None, cache / "smollm2-v0", exist_ok=True)


def load_lm(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def quiet() -> None:
    """No progress bars, per-log prints or warnings in the benchmark's output."""
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _silence(trainer) -> None:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def best_of(repeats: int, fn):
    """Run ``fn`` ``repeats`` times; keep the fastest result (less noise from other load)."""
    results = [fn() for _ in range(repeats)]
    return min(results, key=lambda r: r[0])


# ------------------------------------------------------------------------ SFT


def bench_sft(model_dir: Path, size: Size, tmp: Path) -> list[Row]:
    import torch
    from trainer.stages.accel import make_accelerator

    from trainer.stages.sft import SFTConfig, encode_sft_example, train_sft

    tok = load_tokenizer(model_dir)
    demos = make_demos(size.sft_examples, size.sft_words)
    ours_tokens = sum(len(encode_sft_example(tok, d, size.max_length)[0]) for d in demos)

    def ours():
        torch.manual_seed(0)
        model = load_lm(model_dir)
        cfg = SFTConfig(lr=1e-5, epochs=1, batch_size=size.sft_batch, max_length=size.max_length, warmup_ratio=0.0)
        t0 = time.perf_counter()
        m = train_sft(model, tok, demos, [], cfg, accelerator=make_accelerator("cpu"))
        return time.perf_counter() - t0, m["train_loss"]

    def trl():
        from datasets import Dataset
        from trl import SFTConfig as TRLSFTConfig
        from trl import SFTTrainer

        torch.manual_seed(0)
        ds = Dataset.from_list(
            [
                {
                    "prompt": [{"role": "user", "content": d.prompt}],
                    "completion": [{"role": "assistant", "content": d.completion}],
                }
                for d in demos
            ]
        )
        args = TRLSFTConfig(
            output_dir=str(tmp / "trl-sft"),
            per_device_train_batch_size=size.sft_batch,
            num_train_epochs=1,
            learning_rate=1e-5,
            max_length=size.max_length,
            lr_scheduler_type="constant",
            gradient_checkpointing=False,
            bf16=False,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_steps=10_000,
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = SFTTrainer(
            model=load_lm(model_dir), args=args, train_dataset=ds, processing_class=load_tokenizer(model_dir)
        )
        _silence(trainer)
        tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
        t0 = time.perf_counter()
        out = trainer.train()
        return time.perf_counter() - t0, out.training_loss, tokens

    s_ours, loss_ours = best_of(size.repeats, ours)
    t = best_of(size.repeats, trl)
    s_trl, loss_trl, trl_tokens = t
    work = f"{len(demos)} demos, batch {size.sft_batch}"
    return [
        Row("SFT", "rlhf-studio train_sft", work, s_ours, ours_tokens / s_ours, "tokens/s", f"loss {loss_ours:.3f}"),
        Row("SFT", "trl.SFTTrainer", work, s_trl, trl_tokens / s_trl, "tokens/s", f"loss {loss_trl:.3f}"),
    ]


# ------------------------------------------------------------------------ RM


def bench_rm(model_dir: Path, size: Size, tmp: Path) -> list[Row]:
    import torch
    from trainer.stages.accel import make_accelerator

    from trainer.stages.reward import RewardModel, RMConfig, pairs_from_ranking, train_reward_model

    tok = load_tokenizer(model_dir)
    rankings = make_rankings(size.rm_rankings, size.k, size.rm_words)
    n_pairs = sum(len(pairs_from_ranking(r.ranking)) for r in rankings)
    pairs_per_ranking = size.k * (size.k - 1) // 2

    def ours(mode: str):
        def run():
            torch.manual_seed(0)
            rm = RewardModel.from_policy_dir(model_dir)
            cfg = RMConfig(
                lr=1e-5,
                epochs=1,
                rankings_per_batch=size.rm_per_batch,
                max_length=size.max_length,
                mode=mode,
                warmup_ratio=0.0,
            )
            t0 = time.perf_counter()
            m = train_reward_model(rm, tok, rankings, [], cfg, accelerator=make_accelerator("cpu"))
            return time.perf_counter() - t0, m["forward_rows"]

        return run

    def trl():
        from datasets import Dataset
        from trl import RewardConfig, RewardTrainer

        rows = []
        for r in rankings:
            for w, l in pairs_from_ranking(r.ranking):
                rows.append(
                    {
                        "prompt": [{"role": "user", "content": r.prompt}],
                        "chosen": [{"role": "assistant", "content": r.completions[w]}],
                        "rejected": [{"role": "assistant", "content": r.completions[l]}],
                    }
                )
        args = RewardConfig(
            output_dir=str(tmp / "trl-rm"),
            per_device_train_batch_size=size.rm_per_batch * pairs_per_ranking,  # same pairs per step
            num_train_epochs=1,
            learning_rate=1e-5,
            max_length=size.max_length,
            lr_scheduler_type="constant",
            gradient_checkpointing=False,
            bf16=False,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_steps=10_000,
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        torch.manual_seed(0)
        trainer = RewardTrainer(
            model=str(model_dir),
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=load_tokenizer(model_dir),
        )
        _silence(trainer)
        t0 = time.perf_counter()
        trainer.train()
        return time.perf_counter() - t0, 2 * len(rows)

    s_k, rows_k = best_of(size.repeats, ours("kway"))
    s_p, rows_p = best_of(size.repeats, ours("pairwise"))
    s_t, rows_t = best_of(size.repeats, trl)
    work = f"{len(rankings)} rankings K={size.k} ({n_pairs} pairs), {size.rm_per_batch} rankings/step"
    return [
        Row("RM", "rlhf-studio K-way", work, s_k, n_pairs / s_k, "comparisons/s", f"{int(rows_k)} sequences encoded"),
        Row(
            "RM",
            "rlhf-studio pairwise mode",
            work,
            s_p,
            n_pairs / s_p,
            "comparisons/s",
            f"{int(rows_p)} sequences encoded",
        ),
        Row("RM", "trl.RewardTrainer", work, s_t, n_pairs / s_t, "comparisons/s", f"{int(rows_t)} sequences encoded"),
    ]


# ------------------------------------------------------------------------ PPO


def ppo_prompts(size: Size) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(size.ppo_prompts)]


def bench_ppo_ours(model_dir: Path, size: Size) -> Row:
    import torch
    from trainer.stages.accel import make_accelerator

    from trainer.stages.ppo import PPOConfig, train_ppo
    from trainer.stages.reward import RewardModel, reward_fn_from_model

    tok = load_tokenizer(model_dir)

    def run():
        torch.manual_seed(0)
        policy = load_lm(model_dir)
        ref = copy.deepcopy(policy)
        value = RewardModel.from_policy_dir(model_dir)
        rm = RewardModel.from_policy_dir(model_dir)
        cfg = PPOConfig(
            lr=3e-6,
            iterations=size.ppo_iterations,
            rollout_batch_size=size.ppo_prompts,
            minibatch_size=size.ppo_minibatch,
            ppo_epochs=size.ppo_epochs,
            max_new_tokens=size.ppo_new_tokens,
            temperature=0.7,
            missing_eos_penalty=None,
        )
        t0 = time.perf_counter()
        m = train_ppo(
            policy,
            ref,
            value,
            reward_fn_from_model(rm, tok),
            tok,
            ppo_prompts(size),
            cfg,
            accelerator=make_accelerator("cpu"),
        )
        return time.perf_counter() - t0, m["response_length"]

    s, length = best_of(size.repeats, run)
    episodes = size.ppo_iterations * size.ppo_prompts
    return Row(
        "PPO",
        "rlhf-studio train_ppo",
        _ppo_work(size),
        s,
        episodes / s,
        "episodes/s",
        f"last mean response {length:.0f} tokens",
    )


def _ppo_work(size: Size) -> str:
    return (
        f"{size.ppo_iterations} x {size.ppo_prompts} prompts, {size.ppo_new_tokens} new tokens, "
        f"{size.ppo_epochs} epochs x minibatch {size.ppo_minibatch}"
    )


def bench_ppo_trl(model_dir: Path, size: Size, tmp: Path) -> Row | None:
    if not (TRL112_DIR / "trl").exists():
        print(f"skipping TRL PPO: install it with pip install --no-deps --target {TRL112_DIR.name} trl==1.12.0")
        return None
    spec = tmp / "trl-ppo.json"
    result = tmp / "trl-ppo-result.json"
    spec.write_text(json.dumps({"model_dir": str(model_dir), "size": size.__dict__, "out": str(tmp / "trl-ppo")}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TRL112_DIR), str(REPO_ROOT)]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--trl-ppo-child", str(spec), str(result)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise RuntimeError("TRL 1.12 PPO subprocess failed")
    data = json.loads(result.read_text())
    episodes = size.ppo_iterations * size.ppo_prompts
    return Row(
        "PPO",
        f"TRL {data['trl_version']} PPOTrainer",
        _ppo_work(size),
        data["seconds"],
        episodes / data["seconds"],
        "episodes/s",
        "subprocess, trl 1.12 first on PYTHONPATH",
    )


def trl_ppo_child(spec_path: str, result_path: str) -> None:
    """Runs inside the subprocess: TRL 1.12's PPOTrainer on the same prompts and sizes."""
    quiet()
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    spec = json.loads(Path(spec_path).read_text())
    size = Size(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["size"].items()})
    torch.set_num_threads(size.threads)
    model_dir = Path(spec["model_dir"])
    tok = load_tokenizer(model_dir)
    tok.padding_side = "left"
    rendered = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in ppo_prompts(size)
    ]
    ds = Dataset.from_list([{"input_ids": tok(t, add_special_tokens=False)["input_ids"]} for t in rendered])
    torch.manual_seed(0)
    policy = load_lm(model_dir)
    ref = load_lm(model_dir)
    value = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    args = PPOConfig(
        output_dir=spec["out"],
        per_device_train_batch_size=size.ppo_prompts,
        gradient_accumulation_steps=1,
        num_mini_batches=size.ppo_prompts // size.ppo_minibatch,
        num_ppo_epochs=size.ppo_epochs,
        total_episodes=size.ppo_iterations * size.ppo_prompts,
        local_rollout_forward_batch_size=size.ppo_prompts,
        response_length=size.ppo_new_tokens,
        temperature=0.7,
        stop_token="eos",
        missing_eos_penalty=None,
        learning_rate=3e-6,
        kl_coef=0.02,
        num_sample_generations=0,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
        seed=0,
    )
    trainer = PPOTrainer(
        args=args,
        processing_class=tok,
        model=policy,
        ref_model=ref,
        reward_model=reward,
        train_dataset=ds,
        value_model=value,
        eval_dataset=ds,
    )
    _silence(trainer)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    Path(result_path).write_text(json.dumps({"seconds": seconds, "trl_version": trl.__version__}))


# ------------------------------------------------------------------------ report


def table(rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        out.append([r.stage, r.impl, r.work, f"{r.seconds:.2f}", f"{_fmt(r.rate)} {r.unit}", r.notes])
    return out


def _fmt(x: float) -> str:
    return f"{x:,.3f}" if x < 1 else f"{x:,.2f}" if x < 100 else f"{x:,.0f}"


def ratios(rows: list[Row]) -> list[str]:
    by = {(r.stage, r.impl): r for r in rows}
    lines = []

    def ratio(stage: str, a: str, b: str, label: str) -> None:
        if (stage, a) in by and (stage, b) in by:
            lines.append(f"- {label}: **{by[(stage, a)].rate / by[(stage, b)].rate:.2f}x**")

    ratio("SFT", "rlhf-studio train_sft", "trl.SFTTrainer", "SFT tokens/s, rlhf-studio / TRL SFTTrainer")
    ratio("RM", "rlhf-studio K-way", "rlhf-studio pairwise mode", "RM comparisons/s, K-way / pairwise (same code)")
    ratio("RM", "rlhf-studio K-way", "trl.RewardTrainer", "RM comparisons/s, K-way / TRL RewardTrainer")
    trl_ppo = next((r for r in rows if r.stage == "PPO" and r.impl.startswith("TRL")), None)
    ours_ppo = next((r for r in rows if r.stage == "PPO" and r.impl.startswith("rlhf")), None)
    if trl_ppo and ours_ppo:
        lines.append(f"- PPO episodes/s, rlhf-studio / {trl_ppo.impl}: **{ours_ppo.rate / trl_ppo.rate:.2f}x**")
    return lines


def render_section(results: dict[str, list[Row]], size_notes: dict[str, Size]) -> str:
    from bench.report import machine_line, markdown_table

    parts = [
        "Measured by `bench/training.py` on this CPU, each pair of rows in the same run on the same "
        "model and data. Throughputs count real (non-pad) tokens for SFT, ranking-implied pairs for "
        "the RM and sampled prompts for PPO. TRL's trainers run with gradient checkpointing and bf16 "
        "off, like ours on CPU.",
        "",
        f"Machine: {machine_line()}; torch {_version('torch')}, transformers {_version('transformers')}, "
        f"trl {_version('trl')} (PPO: trl 1.12.0 in a subprocess).",
    ]
    for name, rows in results.items():
        threads = int(rows[0].extra.get("threads", size_notes[name].threads))
        repeats = int(rows[0].extra.get("repeats", size_notes[name].repeats))
        best = f", best of {repeats}" if repeats > 1 else ""
        load = rows[0].extra.get("load")
        load_note = f", 1-min load average {load:.1f} at the start" if load is not None else ""
        parts += ["", f"### `--model {name}` ({threads} torch thread{'s' if threads > 1 else ''}{best}{load_note})", ""]
        parts.append(markdown_table(["Stage", "Implementation", "Work", "Seconds", "Throughput", "Notes"], table(rows)))
        parts += ["", *ratios(rows)]
    parts += [
        "",
        "Reading the RM rows: a ranking of K=4 implies 6 comparisons. K-way batching encodes the 4 "
        "completions once (4 sequences), a pairwise trainer encodes 2 sequences per comparison (12), "
        "so the forward/backward work per comparison drops by (K-1) = 3x; the measured speed-up is "
        "lower where fixed per-step costs (optimizer step, padding to the longest row) weigh in. The "
        "loss and its gradient are the same in both modes. TRL's RewardTrainer is a pairwise "
        "trainer (chosen and rejected of each pair in one batch), so it sits near our pairwise mode.",
        "",
        "Reading the PPO rows: rlhf-studio recomputes the rollout log-probabilities with a forward "
        "pass through the same code path as the update (so the first ratio is exactly 1, and top-p "
        "truncation cannot leak into the old log-probabilities), where TRL takes them from "
        "`generate`'s scores. That extra policy forward per rollout is paid back by computing the "
        "LM head only on response positions (`logits_to_keep`; the 49k-token vocabulary makes the "
        "head a large share of SmolLM2's compute), so at SmolLM2 size the two are at parity. On the "
        "tiny model, per-step framework overhead dominates and favours the plain loops here; the "
        "same holds for SFT, where the fused AdamW kernel also helps.",
        "",
        "The machine is shared with other processes (1-minute load averages above, on 2 cores): "
        "wall-clock numbers move by tens of percent between runs, so read ratios near 1 as parity. "
        "One torch thread: with the cores oversubscribed, two intra-op threads wait on each other "
        "and are several times slower (see the Sampling section). The SmolLM2 PPO rows use one "
        "PPO epoch: four epochs over 16 x ~85 tokens through policy and value model are ~9 TFLOP "
        "per iteration, minutes on this CPU, and the epochs cost the same in both implementations.",
    ]
    return "\n".join(parts)


def _version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return "?"


def run(model: str, cache: Path, stages: list[str]) -> list[Row] | None:
    import torch

    size = SIZES[model]
    torch.set_num_threads(size.threads)
    load_before = os.getloadavg()[0]
    model_dir = prepare_model_dir(model, cache)
    if model_dir is None:
        return None
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-training-") as td:
        tmp = Path(td)
        if "sft" in stages:
            print(f"[{model}] SFT ...", flush=True)
            rows += bench_sft(model_dir, size, tmp)
        if "rm" in stages:
            print(f"[{model}] RM ...", flush=True)
            rows += bench_rm(model_dir, size, tmp)
        if "ppo" in stages:
            print(f"[{model}] PPO ...", flush=True)
            rows.append(bench_ppo_ours(model_dir, size))
            trl_row = bench_ppo_trl(model_dir, size, tmp)
            if trl_row is not None:
                rows.append(trl_row)
    for r in rows:
        r.extra.update(threads=float(size.threads), repeats=float(size.repeats), load=load_before)
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--trl-ppo-child":
        trl_ppo_child(argv[1], argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2", "both"], default="tiny")
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / "data" / "bench")
    parser.add_argument("--stages", default="sft,rm,ppo", help="comma-separated subset of sft,rm,ppo")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 tiny, all cores smollm2)")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--render-only", action="store_true", help="rewrite the docs section from stored results")
    parser.add_argument("--results", type=Path, default=None, help="also write raw rows as JSON here")
    args = parser.parse_args(argv)
    quiet()

    from bench.report import markdown_table, replace_section

    models = ["tiny", "smollm2"] if args.model == "both" else [args.model]
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    results: dict[str, list[Row]] = {}
    stored = args.cache / "training-results.json"
    if stored.exists():  # keep the other model's last numbers for the docs section
        for name, rows in json.loads(stored.read_text()).items():
            if name not in models:
                results[name] = [Row(**r) for r in rows]
    if args.render_only:
        models = []
        if stored.exists():
            results = {k: [Row(**r) for r in v] for k, v in json.loads(stored.read_text()).items()}
    for name in models:
        if args.threads:
            SIZES[name].threads = args.threads
        rows = run(name, args.cache, stages)
        if rows is None:
            continue
        # Stages not run this time keep their last stored rows.
        previous = [Row(**r) for r in json.loads(stored.read_text()).get(name, [])] if stored.exists() else []
        ran = {STAGE_NAMES[s] for s in stages}
        rows = [r for r in previous if r.stage not in ran] + rows
        rows.sort(key=lambda r: list(STAGE_NAMES.values()).index(r.stage))
        results[name] = rows
        print()
        print(markdown_table(["Stage", "Implementation", "Work", "Seconds", "Throughput", "Notes"], table(rows)))
        print("\n".join(ratios(rows)))
    args.cache.mkdir(parents=True, exist_ok=True)
    stored.write_text(json.dumps({k: [r.__dict__ for r in v] for k, v in results.items()}, indent=1))
    if args.results:
        args.results.write_text(stored.read_text())
    if not args.no_docs and results:
        order = {n: i for i, n in enumerate(SIZES)}
        ordered = dict(sorted(results.items(), key=lambda kv: order.get(kv[0], 99)))
        path = replace_section(SECTION, render_section(ordered, SIZES))
        print(f"wrote the '## {SECTION}' section of {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

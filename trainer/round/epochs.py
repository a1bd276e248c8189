"""SFT selection by reward: SFT's per-epoch weights kept on disk, and the RM's choice among them.

When SFT runs several epochs and the round trains a usable reward model, the epoch whose
validation samples the RM scores best is kept (InstructGPT), not simply the last one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file

from trainer import artifacts, stages  # stages.X at call time: tests swap a stage
from trainer.prompting import prompt_text
from trainer.round.context import RoundContext
from trainer.round.outcome import RoundJob
from trainer.stages.sampling import sample_responses


class EpochCheckpoints:
    """SFT's per-epoch weights, kept on disk (not in memory) until the RM has chosen one.

    ``train_sft`` appends a CPU state dict after each epoch; each is written to
    ``<artifacts>/policies/.staging-epochs-run<id>-*/epoch<N>.safetensors`` and read back by index.
    """

    def __init__(self, artifacts_dir: Path, run_id: int, tag: str = "") -> None:
        self.dir = artifacts.staging_dir(artifacts_dir, artifacts.POLICIES, f"epochs-run{run_id}{tag}")
        self.count = 0

    def append(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # Tied weights (embeddings = LM head) share storage; safetensors wants each once.
        seen: dict[int, str] = {}
        unique = {}
        for name, tensor in state.items():
            key = tensor.data_ptr()
            if key not in seen:
                seen[key] = name
                unique[name] = tensor.contiguous()
        save_file(unique, str(self.dir / f"epoch{self.count}.safetensors"), metadata={"aliases": json.dumps(
            {name: seen[t.data_ptr()] for name, t in state.items() if seen[t.data_ptr()] != name})})
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.dir / f"epoch{index}.safetensors"
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
        for name, source in aliases.items():
            state[name] = state[source]
        return state

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def select_sft_epoch(ctx: RoundContext, job: RoundJob, model: Any, rm: Any, epoch_states: EpochCheckpoints) -> Any:
    """Keep the SFT epoch whose validation samples the RM scores best (InstructGPT)."""
    if rm is None or len(epoch_states) < 2:
        return model
    eval_cfg = job.cfg.eval
    prompts = job.data.eval_prompts[: eval_cfg.prompts]
    if not prompts:
        return model
    score_fn = stages.reward_fn_from_model(rm, ctx.tokenizer, max_length=job.cfg.rm.max_length)
    rendered = [prompt_text(ctx.tokenizer, p) for p in prompts]
    scores = []
    for index in range(len(epoch_states)):
        model.load_state_dict(epoch_states[index])
        total, n = 0.0, 0
        for i in range(0, len(rendered), eval_cfg.batch_size):
            samples = sample_responses(
                model, ctx.tokenizer, rendered[i : i + eval_cfg.batch_size],
                max_new_tokens=eval_cfg.max_new_tokens, temperature=eval_cfg.temperature,
                top_p=eval_cfg.top_p, generator_seed=eval_cfg.seed + i,
            )
            total += float(score_fn(samples.prompt_texts, samples.response_texts).sum())
            n += len(samples.response_texts)
        scores.append(total / max(1, n))
        ctx.control.metric("sft", index + 1, {"val_rm_score": scores[-1]})
        ctx.control.check()
    best = max(range(len(scores)), key=lambda i: scores[i])
    model.load_state_dict(epoch_states[best])
    ctx.metrics.setdefault("sft", {}).update(selected_epoch=best + 1, val_rm_score_by_epoch=scores, selected_by="reward")
    ctx.control.log(
        f"sft: kept epoch {best + 1} of {len(scores)} by the RM's validation score "
        f"({', '.join(f'{s:+.3f}' for s in scores)}); validation loss is in the sft metrics"
    )
    return model

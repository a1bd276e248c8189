"""Stage 1: supervised fine-tuning on demonstrations (loss on response tokens only).

The prompt is rendered with the tokenizer's chat template (generation prompt included),
the demonstration follows with EOS appended, and the labels are -100 on the prompt and on
padding, so the model learns to answer and to stop, not to echo prompts. Dropout is off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from trainer.config import SFTConfig, epochs_for
from trainer.prompting import Message, encode_prompt_response, pad_token_id, prompt_text

from .accel import get_accelerator, maybe_gradient_checkpointing, seed_everything, set_dropout_off, shard
from .callbacks import StepCallback, check_cancel
from .checkpoint import cpu_state_dict
from .metrics import StageMetrics
from .optim import backward_and_step, configure_optimizer, decay_groups, prepare_supervised, trainable
from .tensors import IGNORE_INDEX, pad_right

logger = logging.getLogger(__name__)


@dataclass
class SFTExample:
    """One demonstration: a prompt (plain text or chat ``messages``) and the response."""

    prompt: str | None
    messages: list[Message] | None
    completion: str


def encode_sft_example(tokenizer, example: SFTExample, max_length: int) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for one example; labels are -100 on the prompt tokens."""
    text = prompt_text(tokenizer, example)
    ids, n_prompt = encode_prompt_response(tokenizer, text, example.completion, max_length)
    labels = [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
    return ids, labels


def collate_sft(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding gets label -100 (never trained, whatever the pad id is)."""
    input_ids, attention_mask = pad_right([e[0] for e in encoded], pad_id)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for i, (_, lab) in enumerate(encoded):
        labels[i, : len(lab)] = torch.as_tensor(lab, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def completion_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], reduction: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy on label positions; returns ``(loss, n_tokens)``.

    ``reduction="sum"`` returns the summed loss (for exact token-weighted averages).
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    # Shift the labels left instead of slicing the logits: no copy of the [B, T, vocab] tensor.
    labels = F.pad(batch["labels"], (0, 1), value=IGNORE_INDEX)[:, 1:]
    n_tokens = (labels != IGNORE_INDEX).sum()
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    if reduction == "sum":
        return loss_sum, n_tokens
    return loss_sum / n_tokens.clamp(min=1), n_tokens


@torch.no_grad()
def evaluate_sft_loss(model, tokenizer, examples: Sequence[SFTExample], config: SFTConfig, accelerator) -> float:
    """Token-weighted mean completion loss over ``examples`` (exact across processes).

    The forwards run on the unwrapped module: ranks may hold unequal shards, and a DDP
    forward is itself a collective (buffer sync), which would pair up wrongly."""
    model = accelerator.unwrap_model(model)
    model.eval()
    pad_id = pad_token_id(tokenizer)
    total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    local = shard(list(examples), accelerator)
    for i in range(0, len(local), config.eval_batch_size):
        enc = [encode_sft_example(tokenizer, ex, config.max_length) for ex in local[i : i + config.eval_batch_size]]
        batch = {k: v.to(accelerator.device) for k, v in collate_sft(enc, pad_id).items()}
        with accelerator.autocast():
            loss_sum, n = completion_loss(model, batch, reduction="sum")
        total += torch.stack([loss_sum.double(), n.double()])
    total = accelerator.reduce(total, reduction="sum")
    return float(total[0] / total[1].clamp(min=1))


def train_sft(
    model: nn.Module,
    tokenizer,
    train: Sequence[SFTExample],
    val: Sequence[SFTExample],
    config: SFTConfig | None = None,
    accelerator=None,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    epoch_states: list[dict[str, torch.Tensor]] | None = None,
) -> dict[str, float]:
    """Fine-tune ``model`` (a causal LM, trained in place) on demonstrations.

    The passes are ``config.epochs``, raised (up to ``max_epochs``) until the optimizer
    steps reach ``min_steps``. When ``epoch_states`` is a list, a CPU copy of the weights
    after each epoch is appended to it (for choosing the epoch by reward afterwards).

    Returns ``train_loss`` (token-weighted mean over the last epoch), ``val_loss_before``
    and ``val_loss_after`` (only when ``val`` is non-empty), ``steps`` (optimizer steps),
    ``train_tokens`` (supervised tokens, all processes), ``tokens_per_s`` (all real
    tokens, prompt included, per second over all processes) and ``seconds``. The caller saves the model
    (``accelerator.unwrap_model(model)`` is ``model`` itself outside DeepSpeed/FSDP).
    """
    config = config or SFTConfig()
    if not train:
        raise ValueError("SFT needs at least one training example")
    accelerator = get_accelerator(accelerator)
    seed_everything(config.seed, accelerator)
    set_dropout_off(model)
    maybe_gradient_checkpointing(model, accelerator)
    pad_id = pad_token_id(tokenizer)

    encoded = [encode_sft_example(tokenizer, ex, config.max_length) for ex in train]
    loader = DataLoader(
        encoded,
        batch_size=config.batch_size,
        shuffle=True,
        collate_fn=lambda b: collate_sft(b, pad_id),
        generator=torch.Generator().manual_seed(config.seed),
    )
    optimizer = configure_optimizer(
        decay_groups(trainable(model), config.weight_decay), lr=config.lr, weight_decay=config.weight_decay
    )
    epochs = epochs_for(
        len(encoded), config.batch_size, config.grad_accum, config.epochs, config.min_steps, config.max_epochs
    )
    model, optimizer, loader, scheduler = prepare_supervised(
        accelerator, model, optimizer, loader, grad_accum=config.grad_accum, epochs=epochs,
        warmup_ratio=config.warmup_ratio, schedule=config.lr_schedule,
    )

    log = StageMetrics("sft", on_step, accelerator)
    metrics: dict[str, float] = {"epochs": float(epochs)}
    if val:
        metrics["val_loss_before"] = evaluate_sft_loss(model, tokenizer, val, config, accelerator)
        log.emit(0, {"val_loss": metrics["val_loss_before"]})

    step = 0
    seen_tokens = 0
    supervised_tokens = 0
    start = time.perf_counter()
    epoch_loss = log.window()
    for epoch in range(epochs):
        model.train()
        epoch_loss.clear()
        for batch in loader:
            check_cancel(should_stop)
            with accelerator.accumulate(model):
                loss, n_tok = completion_loss(model, batch)
                grad_norm = backward_and_step(accelerator, model, optimizer, loss, config.max_grad_norm)
            seen_tokens += int(batch["attention_mask"].sum())
            supervised_tokens += int(n_tok)
            epoch_loss.add("loss", loss, n_tok)
            log.add("loss", loss, n_tok)
            if accelerator.sync_gradients:
                scheduler.step()
                step += 1
                log.log_optimizer_step(step, scheduler, epoch + 1, grad_norm)
        if epoch_states is not None:
            epoch_states.append(cpu_state_dict(accelerator.unwrap_model(model)))
    elapsed = time.perf_counter() - start

    metrics["train_loss"] = epoch_loss.means(accelerator)["loss"]
    if val:
        metrics["val_loss_after"] = evaluate_sft_loss(model, tokenizer, val, config, accelerator)
        log.emit(step, {"val_loss": metrics["val_loss_after"]})
    counts = accelerator.reduce(
        torch.tensor([seen_tokens, supervised_tokens], dtype=torch.float64, device=accelerator.device), reduction="sum"
    )
    metrics.update(
        steps=float(step),
        train_tokens=float(counts[1]),
        tokens_per_s=float(counts[0]) / max(elapsed, 1e-9),
        seconds=elapsed,
    )
    model.eval()
    logger.info("SFT done: %s", metrics)
    return metrics

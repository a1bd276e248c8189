"""Stage 1: supervised fine-tuning on demonstrations (loss on response tokens only).

The prompt is rendered with the tokenizer's chat template (generation prompt included),
the demonstration follows with EOS appended, and the labels are -100 on the prompt and on
padding, so the model learns to answer and to stop, not to echo prompts. Dropout is off.
A conversation too long for ``max_length`` loses its oldest exchanges first (system
messages kept; ``context_cut_*`` metrics). With ``assistant_turns="all"`` the earlier
assistant turns of a conversation demonstration carry loss too.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from trainer.config import ASSISTANT_TURNS, SFTConfig, epochs_for
from trainer.prompting import (
    Message,
    encode_prompt_response,
    encode_rendered,
    eos_token_ids,
    fit_prompt,
    pad_token_id,
    render_conversation,
    render_prompt,
    response_budget_limit,
)

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


@dataclass
class SFTEncoding:
    """One encoded demonstration: ``input_ids`` and ``labels`` (-100 where no loss), how many
    of its oldest context messages were cut to fit (``context_cut``), and, when every
    assistant turn was asked for but only the last could be labelled, why (``fallback``)."""

    input_ids: list[int]
    labels: list[int]
    context_cut: int = 0
    fallback: str | None = None


def encode_sft(tokenizer, example: SFTExample, max_length: int, assistant_turns: str = "last") -> SFTEncoding:
    """Encode one demonstration for SFT.

    The context is fitted first (:func:`trainer.prompting.fit_prompt`): a conversation too
    long for ``max_length`` less the response loses its oldest exchanges, keeping its system
    messages. ``assistant_turns="last"``: loss on the written reply and its EOS only.
    ``"all"``: a conversation's earlier assistant turns carry loss as well (each turn's
    content and its end-of-turn token; system and user turns and the template's scaffolding
    never), see :func:`_encode_all_turns`; where that cannot be done exactly, the last turn
    only, with the reason in ``fallback``.
    """
    if assistant_turns not in ASSISTANT_TURNS:
        raise ValueError(f"assistant_turns must be one of {', '.join(ASSISTANT_TURNS)}, not {assistant_turns!r}")
    n_response = len(tokenizer(example.completion, add_special_tokens=False)["input_ids"]) + 1  # + EOS
    fitted = fit_prompt(tokenizer, example, response_budget_limit(max_length, n_response))
    fallback = None
    if assistant_turns == "all" and fitted.messages and any(m.get("role") == "assistant" for m in fitted.messages):
        encoded, fallback = _encode_all_turns(tokenizer, fitted.messages, example.completion, max_length)
        if encoded is not None:
            return SFTEncoding(encoded[0], encoded[1], fitted.dropped)
    ids, n_prompt = encode_prompt_response(tokenizer, fitted.text, example.completion, max_length)
    labels = [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
    return SFTEncoding(ids, labels, fitted.dropped, fallback)


def encode_sft_example(tokenizer, example: SFTExample, max_length: int) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for one example; labels are -100 on the prompt tokens
    (the last assistant turn only: :func:`encode_sft` with ``assistant_turns="last"``)."""
    encoded = encode_sft(tokenizer, example, max_length)
    return encoded.input_ids, encoded.labels


def _encode_all_turns(
    tokenizer, context: Sequence[Message], completion: str, max_length: int
) -> tuple[tuple[list[int], list[int]] | None, str | None]:
    """``((input_ids, labels), None)`` with a label on every assistant turn of ``context``
    followed by ``completion``, or ``(None, reason)`` when that cannot be done exactly.

    The whole conversation is rendered with the chat template and tokenised once. For each
    assistant turn, the conversation up to it (with the generation prompt) and up to and
    including it are rendered and tokenised the same way; both must be prefixes of the
    whole encoding (a template that rewrites earlier turns, or a tokenisation that merges
    across the boundary, fails this), and the tokens between them, up to and including the
    last end-of-turn (EOS) token among them, are labelled; the sequence ends with the
    reply's end-of-turn token, as in :func:`encode_sft_example`. Too long for ``max_length``: the
    start is cut (keeping at least half the length before the last reply, as
    :func:`~trainer.prompting.encode_prompt_response` does), then the end.
    """
    conversation = [dict(m) for m in context] + [{"role": "assistant", "content": completion}]
    full_text = render_conversation(tokenizer, conversation)
    if full_text is None:
        return None, "the tokenizer has no chat template"
    ids = encode_rendered(tokenizer, full_text)
    labels = [IGNORE_INDEX] * len(ids)
    stops = set(eos_token_ids(tokenizer))
    last_start = last_end = 0
    for i, message in enumerate(conversation):
        if message.get("role") != "assistant":
            continue
        try:
            before = encode_rendered(tokenizer, render_prompt(tokenizer, None, conversation[:i]))
        except ValueError:
            return None, f"message {i} is an assistant turn right after another one"
        through = encode_rendered(tokenizer, render_conversation(tokenizer, conversation[: i + 1]) or "")
        if ids[: len(before)] != before or ids[: len(through)] != through or len(through) <= len(before):
            return None, (
                f"the chat template's tokens up to the assistant turn at message {i} are not a prefix of the "
                "whole conversation's tokens"
            )
        ends = [j for j in range(len(before), len(through)) if ids[j] in stops]
        if not ends:
            return None, f"the chat template ends the assistant turn at message {i} with no EOS token"
        labels[len(before) : ends[-1] + 1] = ids[len(before) : ends[-1] + 1]
        last_start, last_end = len(before), ends[-1] + 1
    # Nothing after the reply's end-of-turn token (the template's trailing newline) is kept.
    ids, labels = ids[:last_end], labels[:last_end]
    overflow = len(ids) - max_length
    if overflow > 0:
        cut = min(overflow, max(0, last_start - max(1, max_length // 2)))
        ids, labels = ids[cut:][:max_length], labels[cut:][:max_length]
    return (ids, labels), None


def _pair(encoded: SFTEncoding) -> tuple[list[int], list[int]]:
    return encoded.input_ids, encoded.labels


def encoding_metrics(encodings: Sequence[SFTEncoding], assistant_turns: str = "last") -> dict[str, float]:
    """``context_cut_examples`` / ``context_cut_messages``: demonstrations whose context was
    cut from its oldest turns to fit, and the messages dropped in all; with
    ``assistant_turns="all"`` also ``assistant_turns_fallbacks``: demonstrations labelled on
    their last turn only (each distinct reason is logged)."""
    cut = [e.context_cut for e in encodings if e.context_cut]
    metrics = {"context_cut_examples": float(len(cut)), "context_cut_messages": float(sum(cut))}
    if assistant_turns == "all":
        reasons = Counter(e.fallback for e in encodings if e.fallback)
        for reason, n in reasons.items():
            logger.warning("SFT: %d demonstration(s) labelled on their last assistant turn only: %s", n, reason)
        metrics["assistant_turns_fallbacks"] = float(sum(reasons.values()))
    return metrics


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
        enc = [
            _pair(encode_sft(tokenizer, ex, config.max_length, config.assistant_turns))
            for ex in local[i : i + config.eval_batch_size]
        ]
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

    Demonstrations are encoded by :func:`encode_sft` (``config.assistant_turns``).
    Returns ``train_loss`` (token-weighted mean over the last epoch), ``val_loss_before``
    and ``val_loss_after`` (only when ``val`` is non-empty), ``steps`` (optimizer steps),
    ``train_tokens`` (supervised tokens, all processes), ``tokens_per_s`` (all real
    tokens, prompt included, per second over all processes), ``seconds`` and the training
    set's :func:`encoding_metrics` (``context_cut_examples``, ``context_cut_messages``,
    ``assistant_turns_fallbacks`` with "all"). The caller saves the model
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

    encodings = [encode_sft(tokenizer, ex, config.max_length, config.assistant_turns) for ex in train]
    encoded = [_pair(e) for e in encodings]
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
    metrics: dict[str, float] = {"epochs": float(epochs), **encoding_metrics(encodings, config.assistant_turns)}
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

"""Direct preference optimisation on K-way rankings (Rafailov et al. 2023), the round's
alternative to RM + PPO (``stages: ["sft", "dpo"]``).

The loss is TRL's ``sigmoid`` DPO loss: for a preferred completion ``w`` and a rejected
``l`` of the same prompt,
``-log sigmoid(beta * ((log pi(w) - log ref(w)) - (log pi(l) - log ref(l))))``, with
optional label smoothing (conservative DPO). As in the reward model, a ranking's K
completions are each encoded once and every pair the ranking implies is scored from
those K sequence log-probabilities; the loss is the mean over a ranking's pairs, then
over the rankings of the batch. The reference is the starting (SFT) policy, frozen.
Held-out rankings give the preference accuracy of the implicit reward
``beta * (log pi - log ref)``.
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

from trainer.config import DPOConfig, epochs_for

from trainer.prompting import encode_prompt_response, pad_token_id

from .accel import get_accelerator, seed_everything, set_dropout_off
from .callbacks import StepCallback, check_cancel
from .metrics import StageMetrics
from .optim import backward_and_step, configure_optimizer, prepare_supervised, trainable
from .tensors import pad_right, token_logprobs
from .reward import RankingExample, fit_ranking, pairs_from_ranking

logger = logging.getLogger(__name__)


@dataclass
class _Encoded:
    rows: list[list[int]]
    prompt_lens: list[int]
    pairs: list[tuple[int, int]]
    context_cut: int = 0  # oldest context messages dropped to fit


def _encode(tokenizer, ex: RankingExample, max_length: int) -> _Encoded:
    fitted = fit_ranking(tokenizer, ex, max_length)  # as the reward model does
    encoded = [encode_prompt_response(tokenizer, fitted.text, c, max_length) for c in ex.completions]
    return _Encoded(
        [ids for ids, _ in encoded], [n for _, n in encoded], pairs_from_ranking(ex.ranking), fitted.dropped
    )


def _collate(batch: Sequence[_Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
    rows: list[list[int]] = []
    starts: list[int] = []
    groups = []
    for enc in batch:
        base = len(rows)
        rows.extend(enc.rows)
        starts.extend(enc.prompt_lens)
        groups.append((
            torch.tensor([base + a for a, _ in enc.pairs], dtype=torch.long),
            torch.tensor([base + b for _, b in enc.pairs], dtype=torch.long),
        ))
    ids, mask = pad_right(rows, pad_id)
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    response = (positions >= torch.tensor(starts).unsqueeze(1)).long() * mask
    return ids, mask, response, groups


def sequence_logprobs(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token) over each row's response tokens, ``[B]``."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    lp = token_logprobs(logits, ids[:, 1:])
    return (lp * response[:, 1:].to(lp.dtype)).sum(-1)


def dpo_loss(
    policy_lp: torch.Tensor, ref_lp: torch.Tensor, groups: Sequence[tuple[torch.Tensor, torch.Tensor]], beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(loss, correct pairs, pairs, margin sum)`` for a batch of rankings."""
    reward = beta * (policy_lp - ref_lp)
    losses = []
    correct = reward.new_zeros(())
    margins = reward.new_zeros(())
    pairs = 0
    for w, l in groups:
        margin = reward[w.to(reward.device)] - reward[l.to(reward.device)]
        loss = -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
        losses.append(loss.mean())
        correct = correct + (margin > 0).float().sum() + 0.5 * (margin == 0).float().sum()
        margins = margins + margin.detach().sum()
        pairs += len(w)
    return torch.stack(losses).mean(), correct.detach(), torch.tensor(float(pairs)), margins


@torch.no_grad()
def evaluate_preferences(
    policy: nn.Module, ref: nn.Module, tokenizer, examples: Sequence[RankingExample], config: DPOConfig, accelerator
) -> dict[str, float]:
    """Held-out accuracy and mean margin of the implicit reward."""
    pad_id = pad_token_id(tokenizer)
    usable = [ex for ex in examples if pairs_from_ranking(ex.ranking)]
    correct = pairs = margin = 0.0
    policy.eval()
    for i in range(0, len(usable), config.rankings_per_batch):
        enc = [_encode(tokenizer, ex, config.max_length) for ex in usable[i : i + config.rankings_per_batch]]
        ids, mask, response, groups = _collate(enc, pad_id)
        ids, mask, response = (t.to(accelerator.device) for t in (ids, mask, response))
        with accelerator.autocast():
            lp = sequence_logprobs(policy, ids, mask, response)
            ref_lp = sequence_logprobs(ref, ids, mask, response)
        _, c, n, m = dpo_loss(lp, ref_lp, groups, config.beta)
        correct, pairs, margin = correct + float(c), pairs + float(n), margin + float(m)
    return {"accuracy": correct / max(1.0, pairs), "margin": margin / max(1.0, pairs), "pairs": pairs}


def train_dpo(
    policy: nn.Module,
    ref_policy: nn.Module,
    tokenizer,
    train: Sequence[RankingExample],
    val: Sequence[RankingExample],
    config: DPOConfig | None = None,
    accelerator=None,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """Optimise ``policy`` in place with DPO on rankings against the frozen ``ref_policy``.

    Returns ``train_loss``, ``train_accuracy`` (last epoch), ``val_accuracy_before`` /
    ``val_accuracy`` / ``val_margin`` (when ``val`` has pairs), ``steps``, ``epochs``,
    ``seconds``, ``context_cut_examples`` / ``context_cut_messages`` (training rankings
    whose conversation was cut from its oldest turns to fit, as for the reward model).
    """
    config = config or DPOConfig()
    usable = [ex for ex in train if pairs_from_ranking(ex.ranking)]
    if not usable:
        raise ValueError("DPO needs at least one ranking that implies a pair")
    accelerator = get_accelerator(accelerator)
    seed_everything(config.seed, accelerator)
    for m in (policy, ref_policy):
        set_dropout_off(m)
    ref_policy.eval()
    ref_policy.requires_grad_(False)
    ref_policy.to(accelerator.device)
    pad_id = pad_token_id(tokenizer)
    encoded = [_encode(tokenizer, ex, config.max_length) for ex in usable]
    loader = DataLoader(
        list(range(len(encoded))), batch_size=config.rankings_per_batch, shuffle=True,
        collate_fn=lambda idx: _collate([encoded[i] for i in idx], pad_id),
        generator=torch.Generator().manual_seed(config.seed),
    )
    epochs = epochs_for(len(encoded), config.rankings_per_batch, 1, config.epochs, config.min_steps, config.max_epochs)
    # weight_decay 0.01 is torch's AdamW default, which DPO has always trained with
    optimizer = configure_optimizer(trainable(policy), lr=config.lr, weight_decay=0.01)
    model, optimizer, loader, scheduler = prepare_supervised(
        accelerator, policy, optimizer, loader, grad_accum=1, epochs=epochs,
        warmup_ratio=config.warmup_ratio, schedule="cosine",
    )
    log = StageMetrics("dpo", on_step, accelerator)
    cut = [enc.context_cut for enc in encoded if enc.context_cut]
    metrics: dict[str, float] = {
        "epochs": float(epochs), "context_cut_examples": float(len(cut)), "context_cut_messages": float(sum(cut)),
    }
    val_usable = [ex for ex in val if pairs_from_ranking(ex.ranking)]
    if val_usable:
        before = evaluate_preferences(model, ref_policy, tokenizer, val_usable, config, accelerator)
        metrics["val_accuracy_before"] = before["accuracy"]
        log.emit(0, {"val_accuracy": before["accuracy"]})
    step = 0
    start = time.perf_counter()
    totals = log.window()
    for epoch in range(epochs):
        model.train()
        totals.clear()
        for ids, mask, response, groups in loader:
            check_cancel(should_stop)
            with torch.no_grad(), accelerator.autocast():
                ref_lp = sequence_logprobs(ref_policy, ids, mask, response)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    lp = sequence_logprobs(model, ids, mask, response)
                loss, correct, n_pairs, margin = dpo_loss(lp, ref_lp, groups, config.beta, config.label_smoothing)
                backward_and_step(accelerator, model, optimizer, loss, config.max_grad_norm)
            scheduler.step()
            step += 1
            totals.add("loss", loss, len(groups))
            totals.add_ratio("accuracy", correct, n_pairs)
            log.add("loss", loss)
            log.add_ratio("accuracy", correct, n_pairs)
            log.add_ratio("margin", margin, n_pairs)
            log.log_optimizer_step(step, scheduler, epoch + 1)
    last_epoch = totals.means(accelerator)
    metrics.update(
        train_loss=last_epoch["loss"], train_accuracy=last_epoch["accuracy"], steps=float(step),
        seconds=time.perf_counter() - start,
    )
    if val_usable:
        after = evaluate_preferences(model, ref_policy, tokenizer, val_usable, config, accelerator)
        metrics.update(val_accuracy=after["accuracy"], val_margin=after["margin"], val_pairs=after["pairs"])
        log.emit(step, {"val_accuracy": after["accuracy"], "val_margin": after["margin"]})
    model.eval()
    logger.info("DPO done: %s", metrics)
    return metrics

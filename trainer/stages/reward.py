"""Stage 2: the reward model, trained on K-way rankings as in InstructGPT.

The model (decoder + scalar head, its files, scoring and bias normalisation) is
trainer/stages/reward_model.py; this module is its data and training.

Training batches hold whole rankings. Each of a ranking's K completions is encoded once
(K sequences through the backbone), and the loss is the mean of
``-log sigmoid(r_w - r_l)`` over all pairs the ranking implies, then the mean over the
rankings of the batch. Choices:

* ties (completions in the same best-first group) imply no pair: the loss has no
  term that would push tied completions apart or together;
* a ranking flagged ``all_unacceptable`` still orders its completions, so by default its
  pairs are kept (``RMConfig.unacceptable="keep"``); ``"skip"`` drops such rankings;
* a ranking that implies no pair (one group, or fewer than two completions) is skipped
  and counted in ``rankings_skipped``.
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

from app.services.rankings import (
    pairs_from_ranking,  # the one home of ranking arithmetic (torch-free)
)
from trainer.config import RMConfig, epochs_for
from trainer.prompting import (
    FittedPrompt,
    Message,
    encode_prompt_response,
    fit_prompt,
    pad_token_id,
    response_budget_limit,
)

from .accel import get_accelerator, maybe_gradient_checkpointing, seed_everything, set_dropout_off, shard
from .callbacks import StepCallback, check_cancel
from .metrics import StageMetrics
from .optim import backward_and_step, configure_optimizer, prepare_supervised, trainable
from .reward_model import (
    FORMAT,
    HEAD_FILE,
    META_FILE,
    RewardModel,
    decoder_layers,
    frozen_below,
    last_real_index,
    normalize_reward_bias,
    reward_fn_from_model,
    score,
)
from .tensors import pad_right

__all__ = [
    "FORMAT", "HEAD_FILE", "META_FILE", "RMConfig", "RankingExample", "RewardModel", "decoder_layers",
    "evaluate_rankings", "fit_ranking", "frozen_below", "last_real_index", "normalize_reward_bias",
    "pairs_from_ranking", "ranking_batch", "ranking_loss", "reward_fn_from_model", "score", "train_reward_model",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ data


@dataclass
class RankingExample:
    """One labeler's ranking of K completions of a prompt.

    ``ranking`` is best-first groups of indexes into ``completions``; a group of more
    than one is a tie. ``all_unacceptable`` is the labeler's flag that every completion
    was bad (they are still ordered).
    """

    prompt: str | None
    messages: list[Message] | None
    completions: list[str]
    ranking: list[list[int]]
    all_unacceptable: bool = False


@dataclass
class _EncodedRanking:
    rows: list[list[int]]  # one token list per completion (K rows)
    pairs: list[tuple[int, int]]
    context_cut: int = 0  # oldest context messages dropped to fit


def fit_ranking(tokenizer, ex: RankingExample, max_length: int) -> FittedPrompt:
    """A ranking's context fitted (:func:`~trainer.prompting.fit_prompt`: oldest exchanges
    first, system kept) so that its longest completion (and EOS) still fits in
    ``max_length``; the RM and DPO encode their rankings over it."""
    longest = max((len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in ex.completions), default=0)
    return fit_prompt(tokenizer, ex, response_budget_limit(max_length, longest + 1))


def _encode_ranking(tokenizer, ex: RankingExample, max_length: int) -> _EncodedRanking:
    """The K rows of a ranking over its fitted context (:func:`fit_ranking`)."""
    fitted = fit_ranking(tokenizer, ex, max_length)
    rows = [encode_prompt_response(tokenizer, fitted.text, c, max_length)[0] for c in ex.completions]
    return _EncodedRanking(rows=rows, pairs=pairs_from_ranking(ex.ranking), context_cut=fitted.dropped)


def _usable(ex: RankingExample, config: RMConfig) -> bool:
    if ex.all_unacceptable and config.unacceptable == "skip":
        return False
    return len(pairs_from_ranking(ex.ranking)) > 0


def ranking_batch(
    encoded: Sequence[_EncodedRanking], pad_id: int, mode: str = "kway"
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Stack the rankings of a batch into one padded tensor.

    ``kway``: each ranking contributes its K rows once. ``pairwise``: each pair contributes
    its own two rows (the K(K-1) layout of a pairwise trainer). Returns ``(input_ids,
    attention_mask, per-ranking (winner_rows, loser_rows) index tensors)``.
    """
    rows: list[list[int]] = []
    groups: list[tuple[torch.Tensor, torch.Tensor]] = []
    for enc in encoded:
        base = len(rows)
        if mode == "kway":
            rows.extend(enc.rows)
            w = [base + a for a, _ in enc.pairs]
            l = [base + b for _, b in enc.pairs]
        elif mode == "pairwise":
            w, l = [], []
            for a, b in enc.pairs:
                w.append(len(rows))
                rows.append(enc.rows[a])
                l.append(len(rows))
                rows.append(enc.rows[b])
        else:
            raise ValueError(f"unknown RM batch mode {mode!r}")
        groups.append((torch.tensor(w, dtype=torch.long), torch.tensor(l, dtype=torch.long)))
    input_ids, attention_mask = pad_right(rows, pad_id)
    return input_ids, attention_mask, groups


def ranking_loss(
    scores: torch.Tensor, groups: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InstructGPT loss: per ranking the mean of -log sigmoid(r_w - r_l), then the mean.

    Returns ``(loss, n_correct, n_pairs)``; a pair with equal scores counts half correct.
    """
    losses = []
    correct = scores.new_zeros(())
    n_pairs = 0
    for w, l in groups:
        diff = scores[w.to(scores.device)] - scores[l.to(scores.device)]
        losses.append(-F.logsigmoid(diff).mean())
        correct = correct + (diff > 0).float().sum() + 0.5 * (diff == 0).float().sum()
        n_pairs += len(w)
    return torch.stack(losses).mean(), correct.detach(), torch.tensor(float(n_pairs))


@torch.no_grad()
def evaluate_rankings(
    rm: nn.Module, tokenizer, examples: Sequence[RankingExample], config: RMConfig, accelerator
) -> dict[str, float]:
    """Held-out pairwise accuracy (ties in score count half) and mean ranking loss.

    The forwards run on the unwrapped module: ranks may hold unequal shards, and a DDP
    forward is itself a collective (buffer sync), which would pair up wrongly."""
    rm = accelerator.unwrap_model(rm)
    rm.eval()
    pad_id = pad_token_id(tokenizer)
    usable = [ex for ex in examples if _usable(ex, config)]
    local = shard(usable, accelerator)
    totals = torch.zeros(4, dtype=torch.float64, device=accelerator.device)  # correct, pairs, loss sum, rankings
    for i in range(0, len(local), config.eval_rankings_per_batch):
        enc = [
            _encode_ranking(tokenizer, ex, config.max_length) for ex in local[i : i + config.eval_rankings_per_batch]
        ]
        ids, mask, groups = ranking_batch(enc, pad_id, "kway")
        with accelerator.autocast():
            scores = rm(ids.to(accelerator.device), mask.to(accelerator.device))
        loss, correct, n = ranking_loss(scores, groups)
        totals += torch.tensor(
            [float(correct), float(n), float(loss) * len(groups), len(groups)],
            dtype=torch.float64,
            device=accelerator.device,
        )
    totals = accelerator.reduce(totals, reduction="sum")
    return {
        "accuracy": float(totals[0] / totals[1].clamp(min=1)),
        "loss": float(totals[2] / totals[3].clamp(min=1)),
        "pairs": float(totals[1]),
        "rankings": float(totals[3]),
    }


def train_reward_model(
    rm: RewardModel,
    tokenizer,
    train: Sequence[RankingExample],
    val: Sequence[RankingExample],
    config: RMConfig | None = None,
    accelerator=None,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    keep_start_if_better: bool = False,
) -> dict[str, float]:
    """Train ``rm`` in place on rankings; returns metrics.

    With held-out rankings it trains up to ``config.epochs`` passes, stops after
    ``patience`` passes without a better held-out accuracy (once past ``min_steps``) and
    keeps the best pass (``best_epoch``). ``keep_start_if_better`` (a warm-started RM)
    lets the starting weights compete as epoch 0: training that only makes a good RM worse
    on held-out rankings is undone.

    Metrics: ``train_loss`` (mean over the last epoch's batches), ``train_accuracy``,
    ``val_accuracy_before`` / ``val_accuracy`` / ``val_loss`` (when ``val`` has usable
    rankings), ``pairs``, ``rankings``, ``forward_rows`` (sequences encoded; counts are
    summed over processes and epochs), ``rankings_skipped``, ``comparisons_per_s``,
    ``steps``, ``seconds``, and ``context_cut_examples`` / ``context_cut_messages``
    (training rankings whose conversation was cut from its oldest turns to fit
    ``max_length``, and the messages dropped in all).
    """
    config = config or RMConfig()
    with frozen_below(rm, config.trainable_layers):
        return _train(rm, tokenizer, train, val, config, accelerator, on_step, should_stop, keep_start_if_better)


def _train(
    rm: RewardModel,
    tokenizer,
    train: Sequence[RankingExample],
    val: Sequence[RankingExample],
    config: RMConfig,
    accelerator,
    on_step: StepCallback | None,
    should_stop: Callable[[], bool] | None,
    keep_start_if_better: bool,
) -> dict[str, float]:
    accelerator = get_accelerator(accelerator)
    seed_everything(config.seed, accelerator)
    set_dropout_off(rm)
    maybe_gradient_checkpointing(rm, accelerator)
    pad_id = pad_token_id(tokenizer)

    usable = [ex for ex in train if _usable(ex, config)]
    skipped = len(train) - len(usable)
    if not usable:
        raise ValueError("no training ranking implies a pair (all ties, single completions or skipped)")
    encoded = [_encode_ranking(tokenizer, ex, config.max_length) for ex in usable]
    order = list(range(len(encoded)))

    loader = DataLoader(
        order,
        batch_size=config.rankings_per_batch,
        shuffle=True,
        collate_fn=lambda idx: ranking_batch([encoded[i] for i in idx], pad_id, config.mode),
        generator=torch.Generator().manual_seed(config.seed),
    )
    # The pairwise loss is invariant to the head bias (its gradient is 0 up to rounding,
    # which Adam would amplify into drift), so the bias is left to normalisation.
    bias = rm.score_head.bias
    optimizer = configure_optimizer(trainable(rm, exclude=[bias]), lr=config.lr, weight_decay=config.weight_decay)
    val_usable = [ex for ex in val if _usable(ex, config)]
    # With held-out rankings: up to `epochs` passes, stopped by patience once past the step
    # floor. Without: as many passes as the step floor needs, at most `epochs`.
    max_epochs = config.epochs if val_usable else epochs_for(
        len(usable), config.rankings_per_batch, config.grad_accum, 1, config.min_steps, config.epochs
    )
    model, optimizer, loader, scheduler = prepare_supervised(
        accelerator, rm, optimizer, loader, grad_accum=config.grad_accum, epochs=max_epochs,
        warmup_ratio=config.warmup_ratio, schedule=config.lr_schedule,
    )

    log = StageMetrics("reward", on_step, accelerator)
    cut = [enc.context_cut for enc in encoded if enc.context_cut]
    metrics: dict[str, float] = {
        "rankings_skipped": float(skipped),
        "context_cut_examples": float(len(cut)),
        "context_cut_messages": float(sum(cut)),
    }
    best: tuple[float, float] | None = None  # (accuracy, -loss) of the kept epoch
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch = 0
    if val_usable:
        before = evaluate_rankings(model, tokenizer, val_usable, config, accelerator)
        metrics["val_accuracy_before"] = before["accuracy"]
        log.emit(0, {"val_accuracy": before["accuracy"], "val_loss": before["loss"]})
        if keep_start_if_better:  # a warm start competes as "epoch 0"
            best = (before["accuracy"], -before["loss"])
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in accelerator.unwrap_model(model).state_dict().items()}

    step = 0
    rows_seen = pairs_seen = rankings_seen = 0
    epochs_run = 0
    stale = 0
    start = time.perf_counter()
    epoch_stats = log.window()
    for epoch in range(max_epochs):
        model.train()
        epoch_stats.clear()
        log.clear()
        for ids, mask, groups in loader:
            check_cancel(should_stop)
            with accelerator.accumulate(model):
                scores = model(ids, mask)
                loss, correct, n_pairs = ranking_loss(scores, groups)
                grad_norm = backward_and_step(accelerator, model, optimizer, loss, config.max_grad_norm)
            rows_seen += ids.shape[0]
            pairs_seen += int(n_pairs)
            rankings_seen += len(groups)
            for window in (epoch_stats, log):
                window.add("loss", loss, len(groups))
                window.add_ratio("accuracy", correct, n_pairs)
            if accelerator.sync_gradients:
                scheduler.step()
                step += 1
                log.log_optimizer_step(step, scheduler, epoch + 1, grad_norm)
        epochs_run = epoch + 1
        if not val_usable:
            continue
        held = evaluate_rankings(model, tokenizer, val_usable, config, accelerator)
        log.emit(step, {"val_accuracy": held["accuracy"], "val_loss": held["loss"], "epoch": epochs_run})
        score_key = (held["accuracy"], -held["loss"])
        if best is None or score_key > best:
            best, best_epoch, stale = score_key, epochs_run, 0
            if epochs_run < max_epochs:  # the last epoch's weights are the model itself
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in accelerator.unwrap_model(model).state_dict().items()}
            else:
                best_state = None
        else:
            stale += 1
        if stale >= config.patience and step >= config.min_steps:
            break
    elapsed = time.perf_counter() - start
    if best_state is not None and best_epoch != epochs_run:
        accelerator.unwrap_model(model).load_state_dict(best_state)
        logger.info("RM: kept epoch %d of %d (best held-out accuracy; 0 = the warm start)", best_epoch, epochs_run)
    del best_state

    totals = epoch_stats.means(accelerator)
    counts = accelerator.reduce(
        torch.tensor([pairs_seen, rankings_seen, rows_seen], dtype=torch.float64, device=accelerator.device),
        reduction="sum",
    )
    metrics.update(
        train_loss=totals["loss"],
        train_accuracy=totals["accuracy"],
        pairs=float(counts[0]),
        rankings=float(counts[1]),
        forward_rows=float(counts[2]),
        comparisons_per_s=float(counts[0]) / max(elapsed, 1e-9),
        steps=float(step),
        epochs_run=float(epochs_run),
        best_epoch=float(best_epoch if best is not None else epochs_run),
        seconds=elapsed,
    )
    if val_usable:
        after = evaluate_rankings(model, tokenizer, val_usable, config, accelerator)
        metrics.update(val_accuracy=after["accuracy"], val_loss=after["loss"], val_pairs=after["pairs"],
                       val_rankings=after["rankings"])
    rm.eval()
    logger.info("RM done: %s", metrics)
    return metrics

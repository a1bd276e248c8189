"""Stage 2: the reward model, trained on K-way rankings as in InstructGPT.

A :class:`RewardModel` is a causal LM's decoder (``LlamaModel`` for a Llama policy, the
LM head dropped) plus a scalar linear head. The score of a (prompt, response) pair is
the head applied to the hidden state of the **last real token**, located from the
attention mask. Responses end with EOS, so that token is the EOS the policy emits.
The position is never found by searching for the pad id: SmolLM2's pad equals its EOS,
and a head that looks for "the token before the first pad" scores the wrong token.

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

On-disk layout (:meth:`RewardModel.save`): the backbone in Hugging Face layout
(``config.json`` + ``model.safetensors``, loadable by ``AutoModel``), the tokenizer,
``score_head.safetensors`` (``weight [1, hidden]``, ``bias [1]``) and ``reward_model.json``
(format marker, where scores are read, the normalisation offset).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.services.rankings import (
    pairs_from_ranking,  # the one home of ranking arithmetic (torch-free)
)
from trainer.config import RMConfig, epochs_for

from trainer.prompting import Message, PromptLike, encode_prompt_response, pad_token_id, prompt_text

from .accel import get_accelerator, maybe_gradient_checkpointing, model_device, seed_everything, set_dropout_off, shard
from .callbacks import StepCallback, check_cancel
from .checkpoint import atomic_dir
from .metrics import StageMetrics
from .optim import backward_and_step, configure_optimizer, prepare_supervised, trainable
from .tensors import pad_right, position_ids_from_mask

logger = logging.getLogger(__name__)

HEAD_FILE = "score_head.safetensors"
META_FILE = "reward_model.json"
FORMAT = "rlhf-studio-reward-model"


class RewardModel(nn.Module):
    """Decoder backbone + ``nn.Linear(hidden, 1)`` scalar head.

    ``forward(input_ids, attention_mask) -> [B]`` scores at the last real token;
    :meth:`token_scores` gives the head at every position (``[B, T]``), which is what the
    PPO value function uses.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        hidden = self.config.get_text_config().hidden_size
        if head is None:
            head = nn.Linear(hidden, 1)
            # Small weights (lm-human-preferences / InstructGPT style) and a zero bias, so the
            # untrained head starts near 0 and the bias only moves in normalisation.
            nn.init.normal_(head.weight, std=1.0 / math.sqrt(hidden + 1))
            nn.init.zeros_(head.bias)
        # The head stays float32 (and runs outside autocast): the bias shift of
        # normalisation and small score differences survive a bf16 backbone.
        self.score_head = head.float()

    # -- construction --------------------------------------------------------------

    @classmethod
    def from_causal_lm(cls, model: nn.Module, copy: bool = True) -> RewardModel:
        """Build from a loaded causal LM (its decoder; ``copy=False`` shares the weights)."""
        import copy as _copy

        backbone = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, model.base_model_prefix)
        if copy:
            backbone = _copy.deepcopy(backbone)
        return cls(backbone)

    @classmethod
    def from_policy_dir(cls, path: str | Path, dtype: torch.dtype | None = None, device=None) -> RewardModel:
        """Build a fresh RM (random head, zero bias) from a policy directory in HF layout."""
        from transformers import AutoModel

        backbone = AutoModel.from_pretrained(str(path), dtype=dtype or torch.float32)
        rm = cls(backbone)
        return rm.to(device) if device is not None else rm

    @classmethod
    def load(cls, path: str | Path, dtype: torch.dtype | None = None, device=None) -> RewardModel:
        """Load a directory written by :meth:`save`."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        path = Path(path)
        meta = json.loads((path / META_FILE).read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not an rlhf-studio reward model ({META_FILE} format={meta.get('format')!r})")
        backbone = AutoModel.from_pretrained(str(path), dtype=dtype or torch.float32)
        state = load_file(str(path / meta.get("head_file", HEAD_FILE)))
        head = nn.Linear(state["weight"].shape[1], 1)
        head.load_state_dict({k: v.float() for k, v in state.items()})
        rm = cls(backbone, head)
        return rm.to(device) if device is not None else rm

    def save(self, path: str | Path, tokenizer=None, extra: dict[str, Any] | None = None) -> Path:
        """Write the RM atomically (temp dir + rename) in the layout described above."""
        from safetensors.torch import save_file

        path = Path(path)
        with atomic_dir(path) as tmp:
            self.backbone.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            head_state = {k: v.detach().contiguous().cpu() for k, v in self.score_head.state_dict().items()}
            save_file(head_state, str(tmp / HEAD_FILE))
            meta = {
                "format": FORMAT,
                "version": 1,
                "head_file": HEAD_FILE,
                "hidden_size": int(self.score_head.in_features),
                "score_position": "last_real_token_by_attention_mask",
                "response_suffix": "eos",
                "bias": float(self.score_head.bias.detach().float().item()),
                **(extra or {}),
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return path

    # -- compute ---------------------------------------------------------------------

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.backbone.gradient_checkpointing_enable(**kwargs)

    def token_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Head output at every position, ``[B, T]`` (float32)."""
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return self._head(hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Score ``[B]`` read at the last position where ``attention_mask`` is 1."""
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        last = last_real_index(attention_mask)
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self._head(picked)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            return self.score_head(hidden.float()).squeeze(-1)


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of the mask (works for left or right padding)."""
    width = attention_mask.shape[1]
    positions = torch.arange(width, device=attention_mask.device).unsqueeze(0)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)


def decoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's stack of decoder layers (``layers`` on Llama-style models)."""
    n = backbone.config.get_text_config().num_hidden_layers
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} decoder layers of {type(backbone).__name__}")


@contextlib.contextmanager
def frozen_below(rm: RewardModel, trainable_layers: int | None) -> Iterator[None]:
    """Train only the top ``trainable_layers`` decoder layers, the final norm and the head.

    The embeddings and the lower layers get ``requires_grad=False`` for the duration (so
    autograd keeps no activations below the first trainable layer and the backward pass
    is that much shorter), and are restored afterwards. ``None`` trains everything.
    """
    if trainable_layers is None:
        yield
        return
    layers = decoder_layers(rm.backbone)
    keep = {id(p) for layer in list(layers)[len(layers) - trainable_layers :] for p in layer.parameters()}
    keep |= {id(p) for p in rm.score_head.parameters()}
    in_layers = {id(p) for p in layers.parameters()}
    embeddings = rm.backbone.get_input_embeddings()
    in_embeddings = {id(p) for p in embeddings.parameters()} if embeddings is not None else set()
    frozen = [
        p for p in rm.parameters()
        if p.requires_grad and id(p) not in keep and (id(p) in in_layers or id(p) in in_embeddings)
    ]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


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


def _encode_ranking(tokenizer, ex: RankingExample, max_length: int) -> _EncodedRanking:
    text = prompt_text(tokenizer, ex)
    rows = [encode_prompt_response(tokenizer, text, c, max_length)[0] for c in ex.completions]
    return _EncodedRanking(rows=rows, pairs=pairs_from_ranking(ex.ranking))


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
    ``steps``, ``seconds``.
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

    from torch.utils.data import DataLoader

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
    metrics: dict[str, float] = {"rankings_skipped": float(skipped)}
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


# ------------------------------------------------------------------------- scoring


@torch.no_grad()
def score(
    rm: RewardModel,
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 16,
    max_length: int = 1024,
) -> torch.Tensor:
    """Scores ``[N]`` (float32, on CPU) of responses to **rendered** prompt texts.

    ``prompts`` are the texts the policy saw (``build_chat_prompt`` output), exactly what
    PPO hands to its ``reward_fn``. EOS is appended to each response, as in training.
    """
    if len(prompts) != len(responses):
        raise ValueError("prompts and responses differ in length")
    was_training = rm.training
    rm.eval()
    device = model_device(rm)
    pad_id = pad_token_id(tokenizer)
    out = []
    for i in range(0, len(prompts), batch_size):
        rows = [
            encode_prompt_response(tokenizer, p, r, max_length)[0]
            for p, r in zip(prompts[i : i + batch_size], responses[i : i + batch_size])
        ]
        ids, mask = pad_right(rows, pad_id)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(rm(ids.to(device), mask.to(device)).float().cpu())
    rm.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def reward_fn_from_model(
    rm: RewardModel, tokenizer, batch_size: int = 16, max_length: int = 1024
) -> Callable[[list[str], list[str]], torch.Tensor]:
    """A PPO/evaluation ``reward_fn(prompt_texts, response_texts) -> Tensor`` over an RM.

    Scoring runs under ``torch.no_grad`` in eval mode; ``rm``'s ``requires_grad`` flags are
    left alone, so a ``copy.deepcopy(rm)`` taken before or after stays trainable as PPO's
    value model.
    """

    def reward_fn(prompts: list[str], responses: list[str]) -> torch.Tensor:
        return score(rm, tokenizer, prompts, responses, batch_size=batch_size, max_length=max_length)

    return reward_fn


@torch.no_grad()
def normalize_reward_bias(
    rm: RewardModel,
    tokenizer,
    examples: Sequence[tuple[PromptLike, str]],
    batch_size: int = 16,
    max_length: int = 1024,
) -> float:
    """Shift the head bias so ``examples`` (prompt, response) score mean 0; return the shift.

    Use the demonstrations, or policy samples when there are none (InstructGPT). The
    prompt may be any :data:`~trainer.prompting.PromptLike` (plain text, messages, or
    a ``(prompt, messages)`` tuple); it is rendered with the chat template here.
    """
    if not examples:
        raise ValueError("normalisation needs at least one (prompt, response) example")
    prompts = [prompt_text(tokenizer, p) for p, _ in examples]
    responses = [r for _, r in examples]
    mean = float(score(rm, tokenizer, prompts, responses, batch_size, max_length).double().mean())
    offset = -mean
    rm.score_head.bias.add_(offset)
    logger.info("reward bias shifted by %.6f (mean score was %.6f)", offset, mean)
    return offset


def pick_examples(items: Sequence[Any], limit: int, seed: int = 0) -> list[Any]:
    """A reproducible random subset of at most ``limit`` items (for normalisation sets)."""
    items = list(items)
    if len(items) <= limit:
        return items
    return random.Random(seed).sample(items, limit)

"""Shared pieces of the training stages: callbacks, cancellation, prompt formatting,
tokenisation with label masks, sampling, log-probabilities and Accelerate helpers.

Everything here is plain PyTorch / transformers / accelerate; nothing touches the
database. The stages (``sft``, ``reward``, ``ppo``, ``evaluate``) build on it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.prompting import (  # noqa: F401 - Message, PromptLike, prompt_text are re-exported
    Message,
    PromptLike,
    encode_prompt,
    encode_rendered,
    eos_token_ids,
    prompt_text,
    prompt_token_limit,
    render_prompt,
)

logger = logging.getLogger(__name__)

StepCallback = Callable[[str, int, dict[str, float]], None]
"""``on_step(stage, step, metrics)``: called with a stage name (``"sft"``, ``"reward"``,
``"ppo"``), a 1-based optimizer step and a flat dict of float metrics."""


IGNORE_INDEX = -100


class Cancelled(Exception):
    """Raised by a stage when ``should_stop()`` returned True (a cancelled run)."""


def check_cancel(should_stop: Callable[[], bool] | None) -> None:
    """Raise :class:`Cancelled` when the caller asked the stage to stop."""
    if should_stop is not None and should_stop():
        raise Cancelled("training stage cancelled")


def emit(on_step: StepCallback | None, stage: str, step: int, metrics: dict[str, float]) -> None:
    """Send metrics to the callback (if any) and to the module logger."""
    clean = {k: float(v) for k, v in metrics.items()}
    logger.info("%s step %d: %s", stage, step, ", ".join(f"{k}={v:.4g}" for k, v in clean.items()))
    if on_step is not None:
        on_step(stage, step, clean)


# --------------------------------------------------------------------------- prompts
# Rendering, truncation and EOS ids live in trainer/prompting.py (one pipeline for
# labeling samples, rollouts, evaluation and training); these names stay for the stages.

build_chat_prompt = render_prompt


def encode_prompt_response(
    tokenizer, prompt: str, response: str, max_length: int, add_eos: bool = True
) -> tuple[list[int], int]:
    """Tokenise ``prompt`` (already rendered) and ``response`` separately and join them.

    Returns ``(ids, n_prompt)``. EOS is appended to the response. When the pair is longer
    than ``max_length`` the prompt is cut from the left (keeping at least half the budget
    for the response), then the response from the right (its EOS is then lost, which is
    the truth: the model did not see the end).
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token")
    p_ids = encode_rendered(tokenizer, prompt)
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if add_eos:
        r_ids = r_ids + [tokenizer.eos_token_id]
    overflow = len(p_ids) + len(r_ids) - max_length
    if overflow > 0:
        cut = min(overflow, max(0, len(p_ids) - max(1, max_length // 2)))
        p_ids = p_ids[cut:]
        r_ids = r_ids[: max_length - len(p_ids)]
    return p_ids + r_ids, len(p_ids)


def encode_prompt_only(tokenizer, prompt: str, max_length: int) -> list[int]:
    """Tokenise a rendered prompt, keeping its last ``max_length`` tokens."""
    return encode_prompt(tokenizer, prompt, max_length)


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists; returns ``(input_ids, attention_mask)`` as int64 tensors."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists (for batched generation); returns ``(input_ids, attention_mask)``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def pad_token_id(tokenizer) -> int:
    """The pad id, falling back to EOS for tokenizers without a pad token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


# --------------------------------------------------------------------------- models


def set_dropout_off(model: nn.Module) -> None:
    """Zero every dropout probability, in the config(s) and in the modules."""
    configs = []
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and all(cfg is not c for c in configs):
            configs.append(cfg)
    for cfg in configs:
        for key, value in list(vars(cfg).items()):
            if "dropout" in key and isinstance(value, float):
                setattr(cfg, key, 0.0)
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for attr in ("attention_dropout", "dropout", "resid_pdrop", "attn_pdrop", "embd_pdrop"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)


def model_device(model: nn.Module) -> torch.device:
    """Device of the first parameter (CPU for a parameterless module)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def forward_kwargs_supported(model: nn.Module) -> set[str]:
    """Names the model's ``forward`` accepts (to use ``logits_to_keep`` only where it exists)."""
    import inspect

    return set(inspect.signature(model.forward).parameters)


def get_accelerator(accelerator=None):
    """The caller's Accelerator, or a new one for this machine (see ``make_accelerator``)."""
    if accelerator is not None:
        return accelerator
    return make_accelerator("cuda" if torch.cuda.is_available() else "cpu")


def make_accelerator(device_type: str):
    """An Accelerator for ``device_type``: bf16 mixed precision on CUDA, none on CPU.

    accelerate keeps one process-wide ``AcceleratorState`` and refuses a second Accelerator
    with other settings. Another library in the same process (transformers' Trainer, TRL's
    trainers, which default to bf16) may have set it up differently, so a state that does not
    match is reset before ours is built. A worker runs one round at a time, so no live
    Accelerator is affected.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    cuda = device_type == "cuda"
    mixed_precision = "bf16" if cuda else "no"
    state = AcceleratorState._shared_state
    if state:
        current_device = getattr(state.get("device"), "type", None)
        if state.get("_mixed_precision") != mixed_precision or current_device != device_type:
            AcceleratorState._reset_state(reset_partial_state=True)
    # A config's batch size is per optimizer step (sft_batch_size: "demonstrations per
    # optimizer step"), whatever the number of processes: each rank takes its slice of every
    # batch (split_batches), so N ranks make the same steps as one process. With one process
    # this changes nothing.
    loaders = DataLoaderConfiguration(split_batches=True)
    if cuda:
        return Accelerator(mixed_precision=mixed_precision, dataloader_config=loaders)
    return Accelerator(cpu=True, mixed_precision=mixed_precision, dataloader_config=loaders)


def maybe_gradient_checkpointing(model: nn.Module, accelerator) -> None:
    """Turn on gradient checkpointing when training on CUDA (memory over speed).

    ``config.use_cache`` is left alone (it is saved with the policy); the stages pass
    ``use_cache=False`` to every training forward instead.
    """
    if accelerator.device.type != "cuda":
        return
    if hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def make_adamw(params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    """AdamW, fused where torch supports it for these parameters (CPU or CUDA floats).

    The fused kernel is several times faster than the per-tensor loop on CPU (about 1 s
    less per step for SmolLM2-135M on one core); it computes the same update.
    """
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fusable = bool(tensors) and all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in tensors
    )
    if fusable:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, ValueError, TypeError):
            logger.debug("fused AdamW unavailable here; using the default implementation")
    return torch.optim.AdamW(groups, **kwargs)


def seed_everything(seed: int, accelerator=None) -> None:
    """Seed torch (and python/numpy via accelerate) differently on each process."""
    from accelerate.utils import set_seed

    set_seed(seed + (accelerator.process_index if accelerator is not None else 0))


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str) -> Callable[[int], float]:
    """Linear warmup, then ``constant``, ``linear`` or ``cosine`` decay (to 10 %)."""

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant" or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return 1.0 - 0.9 * progress
        if schedule == "cosine":
            return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))
        raise ValueError(f"unknown lr schedule {schedule!r}")

    return f


def prepare_supervised(
    accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    *,
    grad_accum: int,
    epochs: int,
    warmup_ratio: float,
    schedule: str,
) -> tuple[Any, Any, Any, torch.optim.lr_scheduler.LambdaLR]:
    """``accelerator.prepare`` the model, optimizer and loader of a supervised stage (SFT,
    RM) and build its learning-rate schedule over the optimizer steps of all epochs.

    The scheduler is not prepared: it is stepped by hand only when the optimizer really
    steps (after ``grad_accum`` micro-batches), with no per-process scaling.
    """
    accelerator.gradient_accumulation_steps = grad_accum
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    total_steps = max(1, math.ceil(len(loader) / grad_accum) * epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
        lr_lambda(total_steps, int(warmup_ratio * total_steps), schedule),
    )
    return model, optimizer, loader, scheduler


def backward_and_step(
    accelerator, model: nn.Module, optimizer: Any, loss: torch.Tensor, max_grad_norm: float | None
) -> torch.Tensor | None:
    """Backward, clip (on a syncing step) and step; call inside ``accelerator.accumulate``.

    Returns the gradient norm before clipping (a tensor: reading it syncs the device, so
    only callers that log it should), or None when nothing was clipped.
    """
    accelerator.backward(loss)
    grad_norm = None
    if accelerator.sync_gradients and max_grad_norm:
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def shard(items: Sequence[Any], accelerator) -> list[Any]:
    """This process's share of ``items`` (round-robin), for exact distributed evaluation."""
    return list(items[accelerator.process_index :: accelerator.num_processes])


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``dest`` by renames.

    Readers never see a half-written ``dest``: it is either the old directory or the
    complete new one (the swap is two renames on the same file system).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- math


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise to unit variance (and zero mean unless ``shift_mean`` is False) over ``mask``."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) under ``logits`` (float32 log-softmax), same shape as ``labels``."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, -1, labels.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at every position."""
    logits = logits.float()
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


# --------------------------------------------------------------------------- sampling


@dataclass
class Samples:
    """A batch of sampled responses in one tensor layout.

    ``input_ids`` is ``[B, P + R]``: left-padded prompts in the first ``P`` columns, the
    response in the remaining ``R``. ``attention_mask`` covers real prompt tokens and the
    response up to and including its first EOS; ``response_mask`` is ``[B, R]``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_len: int
    response_mask: torch.Tensor
    has_eos: torch.Tensor
    prompt_texts: list[str]
    response_texts: list[str]

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]


def response_mask_from_eos(responses: torch.Tensor, eos_ids: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask, has_eos)``: 1 up to and including the first EOS of each row, 0 after.

    ``eos_ids`` is one id or the policy's whole stop set (:func:`trainer.prompting.eos_token_ids`).
    Found from the EOS position, never from the pad id (which may equal EOS).
    """
    ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids)
    is_eos = torch.isin(responses, torch.as_tensor(ids, dtype=responses.dtype, device=responses.device))
    has_eos = is_eos.any(dim=1)
    width = responses.shape[1]
    first = torch.where(has_eos, is_eos.float().argmax(dim=1), torch.full_like(has_eos, width - 1, dtype=torch.long))
    idx = torch.arange(width, device=responses.device).unsqueeze(0)
    return (idx <= first.unsqueeze(1)).long(), has_eos


@torch.no_grad()
def sample_responses(
    model: nn.Module,
    tokenizer,
    prompt_texts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    max_prompt_length: int | None = 512,
    generator_seed: int | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> Samples:
    """Sample one response per prompt with ``model.generate`` (left padding, EOS stops).

    Prompts are encoded, truncated and stopped exactly as the labeling sampler does
    (trainer/prompting.py). ``generator_seed`` reseeds torch's RNG right before sampling
    (common random numbers: two identical models given the same seed draw identical samples).
    """
    from transformers import GenerationConfig

    device = model_device(model)
    pad_id = pad_token_id(tokenizer)
    eos_ids = eos_token_ids(tokenizer, model)
    limit = prompt_token_limit(getattr(model, "config", None), max_new_tokens, max_prompt_length)
    prompts = [encode_prompt(tokenizer, t, limit) for t in prompt_texts]
    ids, mask = pad_left(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    gen_config = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        repetition_penalty=1.0,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        use_cache=True,
    )
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    was_training = model.training
    model.eval()
    try:
        with autocast() if autocast is not None else contextlib.nullcontext():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_config)
    finally:
        model.train(was_training)
    prompt_len = ids.shape[1]
    responses = out[:, prompt_len:]
    if responses.shape[1] == 0:  # every prompt hit max length at once; keep a 1-token layout
        responses = torch.full((ids.shape[0], 1), eos_ids[0], dtype=torch.long, device=device)
    resp_mask, has_eos = response_mask_from_eos(responses, eos_ids)
    responses = torch.where(resp_mask.bool(), responses, torch.full_like(responses, pad_id))
    texts = [tokenizer.decode(r[m.bool()].tolist(), skip_special_tokens=True) for r, m in zip(responses, resp_mask)]
    return Samples(
        input_ids=torch.cat([ids, responses], dim=1),
        attention_mask=torch.cat([mask, resp_mask], dim=1),
        prompt_len=prompt_len,
        response_mask=resp_mask,
        has_eos=has_eos,
        prompt_texts=list(prompt_texts),
        response_texts=texts,
    )


def response_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int
) -> torch.Tensor:
    """Logits that predict each response token: positions ``P-1 .. P+R-2``, ``[B, R, V]``.

    Uses ``logits_to_keep`` where the model supports it, so no LM-head work is spent on
    the prompt.
    """
    n_resp = input_ids.shape[1] - prompt_len
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask),
        "use_cache": False,
    }
    inner = model.module if hasattr(model, "module") else model
    if "logits_to_keep" in forward_kwargs_supported(inner):
        kwargs["logits_to_keep"] = n_resp + 1
    logits = model(**kwargs).logits
    return logits[:, -(n_resp + 1) : -1]


def response_logprobs(
    model: nn.Module, samples: Samples, temperature: float, batch_size: int | None = None
) -> torch.Tensor:
    """log pi(response token) under ``logits / temperature``, ``[B, R]`` (0 beyond the end)."""
    rows = samples.input_ids.shape[0]
    step = batch_size or rows
    out = []
    for i in range(0, rows, step):
        logits = response_logits(
            model, samples.input_ids[i : i + step], samples.attention_mask[i : i + step], samples.prompt_len
        )
        lp = token_logprobs(logits / temperature, samples.response_ids[i : i + step])
        out.append(lp * samples.response_mask[i : i + step])
    return torch.cat(out, dim=0)

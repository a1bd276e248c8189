"""The reward model itself: a causal LM's decoder plus a scalar head, its files, its scores.

A :class:`RewardModel` is a causal LM's decoder (``LlamaModel`` for a Llama policy, the
LM head dropped) plus a scalar linear head. The score of a (prompt, response) pair is
the head applied to the hidden state of the **last real token**, located from the
attention mask. Responses end with EOS, so that token is the EOS the policy emits.
The position is never found by searching for the pad id: SmolLM2's pad equals its EOS,
and a head that looks for "the token before the first pad" scores the wrong token.

On-disk layout (:meth:`RewardModel.save`): the backbone in Hugging Face layout
(``config.json`` + ``model.safetensors``, loadable by ``AutoModel``), the tokenizer,
``score_head.safetensors`` (``weight [1, hidden]``, ``bias [1]``) and ``reward_model.json``
(format marker, where scores are read, the normalisation offset).

Scoring (:func:`score`, :func:`reward_fn_from_model`) and the bias normalisation
(:func:`normalize_reward_bias`) are here too; training on rankings is trainer/stages/reward.py.
"""

from __future__ import annotations

import contextlib
import copy as _copy
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trainer.prompting import PromptLike, encode_prompt_response, pad_token_id, prompt_text

from .accel import model_device
from .checkpoint import atomic_dir
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
        return self._head(self._hidden(input_ids, attention_mask))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Score ``[B]`` read at the last position where ``attention_mask`` is 1."""
        hidden = self._hidden(input_ids, attention_mask)
        last = last_real_index(attention_mask)
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self._head(picked)

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The backbone's last hidden states ``[B, T, H]`` (positions counted from the mask)."""
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

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

"""The one prompting pipeline: how a prompt becomes the token ids a policy continues, and
which token ids end a response.

Labeling samples (trainer/generation.py, both backends), PPO rollouts, the evaluation,
SFT and the reward model all go through these functions, so the policy is trained on
and judged by exactly what labelers were shown:

* :func:`render_prompt` applies the chat template (with the generation prompt), or, for a
  tokenizer without one, uses the raw prompt, or the messages as ``role: content`` lines;
* :func:`encode_rendered` tokenises a rendered prompt (special tokens only for raw text:
  a chat template already carries its BOS);
* :func:`prompt_token_limit` and :func:`encode_prompt` keep the last tokens of a prompt
  that would not leave room for the response; :func:`fit_messages` first cuts a
  conversation from its oldest turns, keeping its system messages, so a long chat loses
  whole exchanges rather than the middle of one; :func:`fit_prompt` does that for any
  prompt shape and is how every training stage (SFT, RM, DPO, PPO, the evaluation) fits its
  contexts (:func:`response_budget_limit` is the prompt budget beside a response);
* :func:`render_conversation` renders a whole conversation, assistant turns included (SFT
  labels every assistant turn against it, ``sft_assistant_turns="all"``);
* :func:`encode_prompt_response` joins a rendered prompt and a response (EOS appended) for
  the training stages, cutting the prompt from the left when the pair is too long;
* :func:`pad_token_id` is the pad id (EOS for tokenizers without a pad token);
* :func:`eos_token_ids` is the stop set: the tokenizer's EOS and every EOS of the
  checkpoint's generation config (SmolLM2 ends chat turns with ``<|im_end|>``).

No torch here: it works on tokenizers and configs only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)

Message = dict[str, str]
PromptLike = Any
"""A prompt in any of the shapes the stages accept: a plain string, a list of chat
messages, a ``(prompt, messages)`` tuple, or an object with ``.prompt``/``.messages``
attributes (``SFTExample``, ``RankingExample``, ``GenRequest``)."""


def render_prompt(tokenizer: Any, prompt: str | None, messages: Sequence[Message] | None) -> str:
    """The text the model sees before its response.

    With a chat template the conversation (``messages``, else ``prompt`` as one user turn)
    is rendered with the generation prompt (``<|im_start|>assistant\\n`` for SmolLM2);
    without one, the raw prompt, or the messages joined as ``role: content`` lines.
    """
    if messages is None and prompt is None:
        raise ValueError("a prompt needs either `prompt` or `messages`")
    if messages is not None:
        msgs = [dict(m) for m in messages]
        if msgs and msgs[-1].get("role") == "assistant":
            raise ValueError("`messages` must end before the assistant turn to be trained or sampled")
    else:
        msgs = [{"role": "user", "content": prompt or ""}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if messages is None:
        return prompt or ""
    return "".join(f"{m['role']}: {m['content']}\n" for m in msgs)


def render_conversation(tokenizer: Any, messages: Sequence[Message]) -> str | None:
    """The chat template applied to a whole conversation, assistant turns included, with no
    generation prompt (for labelling each assistant turn); None without a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    return tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False, add_generation_prompt=False)


def prompt_parts(item: PromptLike) -> tuple[str | None, list[Message] | None]:
    """``(prompt, messages)`` of any :data:`PromptLike`."""
    if isinstance(item, str):
        return item, None
    if isinstance(item, list):
        return None, item
    if isinstance(item, tuple):
        prompt, messages = item
        return prompt, messages
    if hasattr(item, "prompt") or hasattr(item, "messages"):
        return getattr(item, "prompt", None), getattr(item, "messages", None)
    raise TypeError(f"cannot read a prompt from {type(item).__name__}")


def prompt_text(tokenizer: Any, item: PromptLike) -> str:
    """Render any :data:`PromptLike` with :func:`render_prompt`."""
    prompt, messages = prompt_parts(item)
    return render_prompt(tokenizer, prompt if messages is None else None, messages)


def encode_rendered(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt; BOS etc. are added only when there is no chat template."""
    add_special = not bool(getattr(tokenizer, "chat_template", None))
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def prompt_token_limit(model_config: Any, max_new_tokens: int, max_prompt_length: int | None = None) -> int | None:
    """The most prompt tokens that leave room for ``max_new_tokens`` in the model's context
    (and at most ``max_prompt_length`` when given); None when nothing limits it."""
    limits = []
    context = getattr(model_config, "max_position_embeddings", None) if model_config is not None else None
    if context:
        limits.append(max(1, int(context) - int(max_new_tokens)))
    if max_prompt_length:
        limits.append(int(max_prompt_length))
    return min(limits) if limits else None


def encode_prompt(tokenizer: Any, text: str, limit: int | None = None, key: Any = None) -> list[int]:
    """Token ids of a rendered prompt, keeping its last ``limit`` tokens."""
    ids = encode_rendered(tokenizer, text)
    if limit is not None and len(ids) > limit:
        logger.warning("prompt %r has %d tokens; keeping the last %d", key, len(ids), limit)
        ids = ids[-limit:]
    if not ids:
        raise ValueError(f"prompt {key!r} encodes to zero tokens")
    return ids


def fit_messages(
    tokenizer: Any, messages: Sequence[Message], limit: int | None
) -> tuple[list[Message], int]:
    """The conversation cut from its oldest turns until its rendered prompt fits in
    ``limit`` tokens: ``(messages kept, messages dropped)``.

    Leading system messages always stay. Whole exchanges go, oldest first: from the first
    message after the system ones up to the next user message, so what is kept still
    starts with a user turn. The last user turn always stays; if even that is too long,
    :func:`encode_prompt` keeps its last tokens.
    """
    msgs = [dict(m) for m in messages]
    n_system = 0
    while n_system < len(msgs) and msgs[n_system].get("role") == "system":
        n_system += 1
    system, rest = msgs[:n_system], msgs[n_system:]
    dropped = 0
    while limit is not None:
        if len(encode_rendered(tokenizer, render_prompt(tokenizer, None, system + rest))) <= limit:
            break
        cut = next((i for i in range(1, len(rest)) if rest[i].get("role") == "user"), None)
        if cut is None:
            break
        rest = rest[cut:]
        dropped += cut
    return system + rest, dropped


class FittedPrompt(NamedTuple):
    """A prompt cut to fit (:func:`fit_prompt`): its rendered ``text``, the conversation
    ``messages`` kept (None for a plain-text prompt) and how many messages were ``dropped``."""

    text: str
    messages: list[Message] | None
    dropped: int


def fit_prompt(tokenizer: Any, item: PromptLike, limit: int | None) -> FittedPrompt:
    """Render any :data:`PromptLike` so that it fits in ``limit`` prompt tokens.

    A conversation loses its oldest exchanges first (:func:`fit_messages`: system messages
    kept, what is kept starts with a user turn); a plain-text prompt is rendered as it is.
    Whatever is still too long is cut from the left by the encoder
    (:func:`encode_prompt`, :func:`encode_prompt_response`). The training stages (SFT, the
    reward model, DPO, PPO) and the evaluation all fit their prompts here and count
    ``dropped`` in their metrics (``context_cut_examples``, ``context_cut_messages``).
    """
    prompt, messages = prompt_parts(item)
    if messages is None:
        return FittedPrompt(render_prompt(tokenizer, prompt, None), None, 0)
    kept, dropped = fit_messages(tokenizer, messages, limit)
    if dropped:
        logger.info("conversation of %d messages cut by its %d oldest to fit %s tokens", len(messages), dropped, limit)
    return FittedPrompt(render_prompt(tokenizer, None, kept), kept, dropped)


def response_budget_limit(max_length: int, response_tokens: int) -> int:
    """The prompt tokens a stage with ``max_length`` tokens per sequence allows before a
    response of ``response_tokens``: what is left, but never less than half the length
    (the share :func:`encode_prompt_response` keeps for the prompt anyway)."""
    return max(int(max_length) - int(response_tokens), max(1, int(max_length) // 2))


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in ([value] if isinstance(value, int) else value)]


def eos_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Every token id that ends a response: the generation config's EOS ids and the tokenizer's.

    ``generation_config`` may be a ``GenerationConfig``, a model (its ``generation_config``
    is used), a policy directory (its ``generation_config.json``) or None.
    """
    ids: list[int] = []
    if isinstance(generation_config, str | Path):
        path = Path(generation_config) / "generation_config.json"
        if path.is_file():
            ids += _as_ids(json.loads(path.read_text(encoding="utf-8")).get("eos_token_id"))
    elif generation_config is not None:
        cfg = getattr(generation_config, "generation_config", generation_config)
        ids += _as_ids(getattr(cfg, "eos_token_id", None))
    ids += _as_ids(getattr(tokenizer, "eos_token_id", None))
    if not ids:
        raise ValueError("the policy defines no EOS token; cannot tell when to stop")
    return sorted(set(ids))


def encode_prompt_response(
    tokenizer: Any, prompt: str, response: str, max_length: int, add_eos: bool = True
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


def pad_token_id(tokenizer: Any) -> int:
    """The pad id, falling back to EOS for tokenizers without a pad token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

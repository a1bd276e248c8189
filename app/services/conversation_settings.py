"""A conversation set's limits (``PromptSet.conversation``), in their own module because
both the prompt-set service (creating a set) and the conversation service (enforcing the
limits) read them. Rankers per node is the set's ``overlap``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from app.services.errors import Invalid

CONVERSATION = "conversation"

#: Each setting's (lowest, highest) value; the API schema (app/schemas/prompt_sets.py) uses them.
BOUNDS: dict[str, tuple[int, int]] = {"max_turns": (1, 50), "branching": (1, 20), "max_context_chars": (200, 500_000)}
#: The settings that are true or false.
FLAGS = ("red_team",)


@dataclass(frozen=True)
class ConversationSettings:
    """A conversation set's limits.

    ``max_turns``: user turns per conversation (the seed is turn 1); ``branching``: user
    turns that may continue one assistant reply; ``max_context_chars``: characters of a
    context (every message of the path) that a new turn may not push it past;
    ``red_team``: labelers try to make the model fail, and the set's rankings and written
    replies are training data only once an admin promotes it (app/services/red_team.py).
    """

    max_turns: int = 4
    branching: int = 2
    max_context_chars: int = 16_000
    red_team: bool = False


def check_settings(values: dict[str, Any] | None, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate and normalise a set's ``conversation`` settings; what is missing keeps its
    ``current`` value (a PATCH), else the default."""
    values = dict(values or {})
    known = set(ConversationSettings.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise Invalid(f"unknown conversation setting(s): {', '.join(sorted(unknown))}")
    out = {**asdict(ConversationSettings()), **{k: v for k, v in (current or {}).items() if k in known}}
    for key, (low, high) in BOUNDS.items():
        if values.get(key) is None:
            continue
        try:
            value = int(values[key])
        except (TypeError, ValueError):
            raise Invalid(f"conversation.{key} must be an integer") from None
        if not low <= value <= high:
            raise Invalid(f"conversation.{key} must be from {low} to {high}, not {value}")
        out[key] = value
    for key in FLAGS:
        if values.get(key) is None:
            continue
        if not isinstance(values[key], bool):
            raise Invalid(f"conversation.{key} must be true or false")
        out[key] = values[key]
    return out

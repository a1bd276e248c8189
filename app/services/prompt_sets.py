"""Prompt sets: create, edit, list; content hashing and the deterministic split / demonstration draw.

The content hash is the identity of a prompt inside its set (duplicates are skipped on
import). It is the sha256 of the prompt text, or of ``json.dumps(messages, sort_keys=True)``
for chat prompts. The train/validation split (when an import gives none) and whether a
prompt asks for a demonstration are both drawn from that hash, so they are reproducible
and never depend on import order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.models import DEFAULT_SAMPLING, Prompt, PromptSet, PromptSetStatus, User
from app.models.prompts import PROMPT_SET_KINDS, PROMPT_SET_STATUSES
from app.services import audit, chat_templates, red_team
from app.services.conversation_settings import CONVERSATION, check_settings
from app.services.errors import Conflict, Invalid, NotFound

K_MIN, K_MAX = 2, 9
OVERLAP_MAX = 50
NAME_MAX = 128
EDITABLE = ("name", "description", "guidelines", "k", "overlap", "sampling", "demonstration_share", "status")


def content_hash(text: str | None, messages: list[dict[str, Any]] | None = None) -> str:
    """sha256 hex of the prompt text, or of the canonical JSON of the chat messages."""
    payload = text if text is not None else json.dumps(messages, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _fraction(digest: str, start: int) -> float:
    """A number in [0, 1) read from 8 hex digits of the hash (independent slices for independent draws)."""
    return int(digest[start : start + 8], 16) / 0x1_0000_0000


def split_for(digest: str, validation_fraction: float) -> str:
    """Deterministic split from the content hash: 'validation' for about that fraction of prompts."""
    return "validation" if _fraction(digest, 0) < validation_fraction else "train"


def wants_demonstration(digest: str, share: float) -> bool:
    """Deterministic draw (from another slice of the hash than the split) for a demonstration."""
    return _fraction(digest, 8) < share


def _check_sampling(sampling: dict[str, Any]) -> dict[str, Any]:
    merged = {**DEFAULT_SAMPLING, **sampling}
    unknown = set(merged) - set(DEFAULT_SAMPLING)
    if unknown:
        raise Invalid(f"unknown sampling parameter(s): {', '.join(sorted(unknown))}")
    try:
        temperature = float(merged["temperature"])
        top_p = float(merged["top_p"])
        max_new_tokens = int(merged["max_new_tokens"])
    except (TypeError, ValueError) as exc:
        raise Invalid(f"sampling parameters must be numbers: {exc}") from exc
    if not 0.0 < temperature <= 5.0:
        raise Invalid("sampling.temperature must be in (0, 5]")
    if not 0.0 < top_p <= 1.0:
        raise Invalid("sampling.top_p must be in (0, 1]")
    if not 1 <= max_new_tokens <= 8192:
        raise Invalid("sampling.max_new_tokens must be from 1 to 8192")
    return {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}


def _validate(values: dict[str, Any]) -> dict[str, Any]:
    """Check and normalise the editable fields present in ``values``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in EDITABLE:
            raise Invalid(f"unknown prompt set field {key!r}")
        if value is None:
            continue
        if key == "name":
            value = str(value).strip()
            if not value or len(value) > NAME_MAX:
                raise Invalid(f"name must be 1 to {NAME_MAX} characters")
        elif key in ("description", "guidelines"):
            value = str(value)
        elif key == "k":
            value = int(value)
            if not K_MIN <= value <= K_MAX:
                raise Invalid(f"k must be from {K_MIN} to {K_MAX}, not {value}")
        elif key == "overlap":
            value = int(value)
            if not 1 <= value <= OVERLAP_MAX:
                raise Invalid(f"overlap must be from 1 to {OVERLAP_MAX}, not {value}")
        elif key == "demonstration_share":
            value = float(value)
            if not 0.0 <= value <= 1.0:
                raise Invalid("demonstration_share must be from 0 to 1")
        elif key == "status":
            if value not in PROMPT_SET_STATUSES:
                raise Invalid(f"status must be one of {', '.join(PROMPT_SET_STATUSES)}, not {value!r}")
        elif key == "sampling":
            if not isinstance(value, dict):
                raise Invalid("sampling must be an object")
            value = _check_sampling(value)
        out[key] = value
    return out


def _name_taken(db: Session, name: str, exclude_id: int | None = None) -> bool:
    query = select(PromptSet.id).where(PromptSet.name == name)
    if exclude_id is not None:
        query = query.where(PromptSet.id != exclude_id)
    return db.scalar(query) is not None


def _kind_fields(
    db: Session, kind: str | None, conversation: dict[str, Any] | None, artifacts_dir: Path | None
) -> dict[str, Any]:
    """The create-only fields: ``kind``, and a conversation set's settings. A conversation
    set's ``rankers_per_node`` is its overlap; it needs a deployed policy with a chat
    template (app/services/chat_templates.py)."""
    kind = kind or "prompts"
    if kind not in PROMPT_SET_KINDS:
        raise Invalid(f"kind must be one of {', '.join(PROMPT_SET_KINDS)}, not {kind!r}")
    if kind != CONVERSATION:
        if conversation:
            raise Invalid('conversation settings are for sets of kind "conversation"')
        return {"kind": kind}
    settings = dict(conversation or {})
    rankers = settings.pop("rankers_per_node", None)
    out: dict[str, Any] = {"kind": kind, "conversation": check_settings(settings)}
    if rankers is not None:
        out.update(_validate({"overlap": rankers}))
    if artifacts_dir is None:
        raise ValueError("creating a conversation set needs the artifacts dir (to read the policy's chat template)")
    chat_templates.require_chat_policy(db, artifacts_dir)
    return out


def create_prompt_set(
    db: Session,
    actor: User | None,
    *,
    kind: str | None = None,
    conversation: dict[str, Any] | None = None,
    artifacts_dir: Path | None = None,
    **values: Any,
) -> PromptSet:
    """Create a set from the editable fields (name, k, overlap, guidelines, sampling, ...).

    ``kind`` "conversation" makes a conversation set (app/services/conversations.py) with
    ``conversation`` settings; the deployed policy must have a chat template, read from
    its checkpoint under ``artifacts_dir``."""
    fields = _validate(values)
    if "name" not in fields:
        raise Invalid("name is required")
    if _name_taken(db, fields["name"]):
        raise Conflict(f"a prompt set named {fields['name']!r} already exists")
    fields.update(_kind_fields(db, kind, conversation, artifacts_dir))
    fields.setdefault("sampling", dict(DEFAULT_SAMPLING))
    ps = PromptSet(**fields)
    db.add(ps)
    db.flush()
    audit.record(
        db, actor, "prompt_set.create", "prompt_set", ps.id, name=ps.name, k=ps.k, overlap=ps.overlap,
        **({"kind": ps.kind, "conversation": ps.conversation} if ps.kind == CONVERSATION else {}),
    )
    return ps


def _conversation_update(db: Session, ps: PromptSet, conversation: dict[str, Any] | None) -> dict[str, Any]:
    """The fields a PATCH of ``conversation`` settings changes: the merged settings, and the
    overlap for ``rankers_per_node``. Only a conversation set has them; a red-team set with
    labels stays one (app/services/red_team.py)."""
    if conversation is None:
        return {}
    if ps.kind != CONVERSATION:
        raise Invalid('conversation settings are for sets of kind "conversation"')
    settings = {k: v for k, v in conversation.items() if v is not None}
    rankers = settings.pop("rankers_per_node", None)
    out: dict[str, Any] = {"conversation": check_settings(settings, current=ps.conversation)}
    red_team.check_setting_change(db, ps, out["conversation"])
    if rankers is not None:
        out.update(_validate({"overlap": rankers}))
    return out


def update_prompt_set(db: Session, actor: User | None, ps: PromptSet, **values: Any) -> PromptSet:
    """Change the given fields; a new demonstration share re-draws wants_demonstration for every prompt.

    ``conversation`` (a conversation set) changes the given settings and keeps the others;
    a lowered limit holds for new turns (a leased task past it is refused on submit)."""
    conversation = _conversation_update(db, ps, values.pop("conversation", None))
    fields = {**_validate(values), **conversation}
    if "name" in fields and _name_taken(db, fields["name"], exclude_id=ps.id):
        raise Conflict(f"a prompt set named {fields['name']!r} already exists")
    changed = {k: v for k, v in fields.items() if getattr(ps, k) != v}
    for key, value in changed.items():
        setattr(ps, key, value)
    db.flush()
    if "demonstration_share" in changed:
        redraw_demonstrations(db, ps)
    if changed:
        shown = {k: (v if k not in ("guidelines", "description") else "changed") for k, v in changed.items()}
        audit.record(db, actor, "prompt_set.update", "prompt_set", ps.id, **shown)
    return ps


def redraw_demonstrations(db: Session, ps: PromptSet, batch: int = 1000) -> None:
    """Recompute Prompt.wants_demonstration for the whole set from the hashes (two UPDATEs per batch)."""
    last_id = 0
    while True:
        rows = db.execute(
            select(Prompt.id, Prompt.content_hash)
            .where(Prompt.prompt_set_id == ps.id, Prompt.id > last_id)
            .order_by(Prompt.id)
            .limit(batch)
        ).all()
        if not rows:
            break
        last_id = rows[-1].id
        yes = [r.id for r in rows if wants_demonstration(r.content_hash, ps.demonstration_share)]
        no = [r.id for r in rows if not wants_demonstration(r.content_hash, ps.demonstration_share)]
        if yes:
            db.execute(update(Prompt).where(Prompt.id.in_(yes)).values(wants_demonstration=True))
        if no:
            db.execute(update(Prompt).where(Prompt.id.in_(no)).values(wants_demonstration=False))
    db.flush()


def get_prompt_set(db: Session, prompt_set_id: int) -> PromptSet:
    ps = db.get(PromptSet, prompt_set_id)
    if ps is None:
        raise NotFound(f"prompt set {prompt_set_id} not found")
    return ps


def find_prompt_set(db: Session, name_or_id: str) -> PromptSet:
    """By exact name, else by numeric id (the CLI's SET argument)."""
    ps = db.scalar(select(PromptSet).where(PromptSet.name == name_or_id))
    if ps is None and name_or_id.isdigit():
        ps = db.get(PromptSet, int(name_or_id))
    if ps is None:
        raise NotFound(f"no prompt set named {name_or_id!r}")
    return ps


def list_prompt_sets(db: Session, statuses: tuple[str, ...] | None = None) -> list[PromptSet]:
    query = select(PromptSet).order_by(PromptSet.id)
    if statuses:
        query = query.where(PromptSet.status.in_(statuses))
    return list(db.scalars(query))


def active_prompt_sets(db: Session, *, by_name: bool = False) -> list[PromptSet]:
    """The sets that are labeled and sampled now, by id (or by name, for people)."""
    query = select(PromptSet).where(PromptSet.status == PromptSetStatus.ACTIVE)
    return list(db.scalars(query.order_by(PromptSet.name if by_name else PromptSet.id)))


def is_serving(ps: PromptSet) -> bool:
    """Whether the set hands out labeling tasks: only an active set does (paused and archived do not)."""
    return ps.status == PromptSetStatus.ACTIVE


def get_prompt(db: Session, prompt_id: int, *, lock: bool = False) -> Prompt:
    """The prompt; ``lock`` takes its row lock (PostgreSQL: FOR NO KEY UPDATE, waiting) and
    reloads it, as slot counting needs (app/services/slots.py)."""
    if lock:
        prompt = db.scalar(
            select(Prompt)
            .where(Prompt.id == prompt_id)
            .with_for_update(key_share=True)
            .execution_options(populate_existing=True)
        )
    else:
        prompt = db.get(Prompt, prompt_id)
    if prompt is None:
        raise NotFound(f"prompt {prompt_id} not found")
    return prompt


def list_prompts(
    db: Session,
    prompt_set_id: int,
    *,
    split: str | None = None,
    gold: bool | None = None,
    search: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[Prompt]:
    query = select(Prompt).where(Prompt.prompt_set_id == prompt_set_id)
    if split:
        query = query.where(Prompt.split == split)
    if gold is not None:
        query = query.where(Prompt.is_gold.is_(gold))
    if search:
        query = query.where(Prompt.text.contains(search, autoescape=True))
    return list(db.scalars(query.order_by(Prompt.id).limit(limit).offset(offset)))

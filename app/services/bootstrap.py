"""First-start set-up: an admin user (password printed once by the caller) and the demo prompt set."""

from __future__ import annotations

from importlib import resources

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Prompt, PromptSet, User
from app.services import imports, prompt_sets, users
from app.services.security import generate_password

ADMIN_NAME = "admin"
DEMO_SET_NAME = "demo"
#: The demo set's settings: 4 completions to rank, one labeler per prompt, a demonstration
#: asked for about one prompt in four, and short samples so a CPU keeps up.
DEMO_SET = {
    "k": 4,
    "overlap": 1,
    "demonstration_share": 0.25,
    "sampling": {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 64},
    "description": "About 60 short, diverse instructions shipped with rlhf-studio (app/demo/demo_prompts.jsonl).",
    "guidelines": (
        "Rank the completions from best to worst. Prefer answers that are correct, complete and "
        "concise, written in whole sentences, without repetition. Use a tie when two are equally good."
    ),
}


def ensure_admin(db: Session) -> tuple[str, str | None]:
    """Create ``admin`` with a random password when no admin exists.

    Returns the admin's name and the new password, or None when one existed already.
    """
    existing = db.scalar(select(User).where(User.role == "admin").order_by(User.id).limit(1))
    if existing is not None:
        return existing.username, None
    password = generate_password()
    users.create_user(db, ADMIN_NAME, password, "admin")
    return ADMIN_NAME, password


def demo_prompts_bytes() -> bytes:
    """The shipped demo prompts (JSONL, with ``split`` on every line)."""
    return resources.files("app.demo").joinpath("demo_prompts.jsonl").read_bytes()


def ensure_demo_set(db: Session, validation_fraction: float = 0.1) -> tuple[PromptSet, int]:
    """Create the prompt set ``demo`` from the shipped prompts once.

    Returns the set and the number of prompts imported now (0 when the set existed). A set
    named ``demo`` that an admin created or emptied is left as it is: nothing is re-imported
    into an existing set, so a second start never duplicates or resurrects prompts.
    """
    existing = db.scalar(select(PromptSet).where(PromptSet.name == DEMO_SET_NAME))
    if existing is not None:
        return existing, 0
    ps = prompt_sets.create_prompt_set(db, None, name=DEMO_SET_NAME, **DEMO_SET)
    rows = imports.parse_jsonl(demo_prompts_bytes())
    result = imports.import_rows(db, ps, rows, validation_fraction=validation_fraction, source="demo")
    return ps, result.imported


def count_prompts(db: Session, prompt_set_id: int) -> int:
    return db.scalar(select(func.count(Prompt.id)).where(Prompt.prompt_set_id == prompt_set_id)) or 0

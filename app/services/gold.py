"""Gold prompts: an admin's reference ranking, mixed into labelers' queues to measure accuracy.

What the reference is: best-first groups of completion ids, the same shape as a labeler's
ranking, over completions of that prompt. Completions are never deleted (a redeploy only
marks them retired), so the ids keep pointing at the same texts across policy versions.
A gold task therefore always shows exactly the gold completions (the task service's
``served_completions``), whatever policy is deployed, so the labeler's ranking and the
reference cover the same texts and accuracy is a plain pairwise comparison
(:func:`app.services.stats.gold_agreement`). Gold prompts are mixed into queues at
``settings.gold_rate`` by the task service.

Gold prompts are left out of exports unless asked for (``include_gold``) and out of the
trainer's data through the same export functions.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Completion, Prompt, User
from app.services import audit
from app.services.errors import Invalid


def validate_gold_ranking(db: Session, prompt: Prompt, ranking: list[list[int]]) -> list[list[int]]:
    """Check that ``ranking`` is best-first groups of distinct completion ids of this prompt."""
    groups = [list(g) for g in ranking]
    if len(groups) < 2 or any(not g for g in groups):
        raise Invalid("a gold ranking needs at least two non-empty groups (something must be better)")
    ids = [cid for g in groups for cid in g]
    if len(ids) != len(set(ids)):
        raise Invalid("a completion appears twice in the gold ranking")
    known = set(db.scalars(select(Completion.id).where(Completion.prompt_id == prompt.id, Completion.id.in_(ids))))
    missing = [cid for cid in ids if cid not in known]
    if missing:
        raise Invalid(f"completion(s) {', '.join(map(str, missing))} are not completions of prompt {prompt.id}")
    k = prompt.prompt_set.k
    if len(ids) != k:
        raise Invalid(f"rank exactly K={k} completions (got {len(ids)}), so the gold task looks like any other")
    return groups


def set_gold(db: Session, actor: User | None, prompt: Prompt, ranking: list[list[int]]) -> Prompt:
    """Make ``prompt`` a gold prompt with this reference ranking."""
    prompt.gold_ranking = validate_gold_ranking(db, prompt, ranking)
    prompt.is_gold = True
    audit.record(db, actor, "prompt.gold_set", "prompt", prompt.id, ranking=prompt.gold_ranking)
    db.flush()
    return prompt


def clear_gold(db: Session, actor: User | None, prompt: Prompt) -> Prompt:
    prompt.is_gold = False
    prompt.gold_ranking = None
    audit.record(db, actor, "prompt.gold_clear", "prompt", prompt.id)
    db.flush()
    return prompt

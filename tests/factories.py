"""Direct-to-database builders for test data (prompt sets, prompts, policies, completions).

Tests of one area use these to set up the rows another area would normally create.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Completion, Policy, Prompt, PromptSet
from app.services import prompt_sets


def content_hash(text: str | None, messages: list[dict[str, str]] | None = None) -> str:
    """The import service's hash (the single source), so factory prompts dedupe like imported ones."""
    return prompt_sets.content_hash(text, messages)


def make_prompt_set(db: Session, name: str = "set", *, k: int = 4, overlap: int = 1, **kw) -> PromptSet:
    ps = PromptSet(name=name, k=k, overlap=overlap, **kw)
    db.add(ps)
    db.flush()
    return ps


def make_prompts(
    db: Session, prompt_set: PromptSet, texts: Sequence[str], split: str = "train", **kw
) -> list[Prompt]:
    prompts = [
        Prompt(prompt_set_id=prompt_set.id, text=t, split=split, content_hash=content_hash(t), **kw)
        for t in texts
    ]
    db.add_all(prompts)
    db.flush()
    return prompts


def make_policy(db: Session, *, deployed: bool = True, artifact_path: str = "policies/v0", **kw) -> Policy:
    latest = db.scalar(select(func.max(Policy.version)))
    version = 0 if latest is None else latest + 1
    if deployed:
        for p in db.scalars(select(Policy).where(Policy.deployed.is_(True))):
            p.deployed = False
        db.flush()
    policy = Policy(version=version, artifact_path=artifact_path, deployed=deployed, **kw)
    db.add(policy)
    db.flush()
    return policy


def make_completions(
    db: Session, prompt: Prompt, policy: Policy, k: int, texts: Sequence[str] | None = None
) -> list[Completion]:
    texts = texts or [f"completion {i} of prompt {prompt.id}" for i in range(k)]
    rows = [
        Completion(prompt_id=prompt.id, policy_id=policy.id, text=t, seed=i, token_count=len(t.split()))
        for i, t in enumerate(texts)
    ]
    db.add_all(rows)
    db.flush()
    return rows


def ready_set(
    db: Session, name: str = "set", n_prompts: int = 5, k: int = 4, overlap: int = 1, **kw
) -> tuple[PromptSet, list[Prompt], Policy]:
    """A prompt set whose prompts each have K ready completions from a deployed policy."""
    ps = make_prompt_set(db, name, k=k, overlap=overlap, **kw)
    prompts = make_prompts(db, ps, [f"Prompt number {i} of {name}" for i in range(n_prompts)])
    policy = db.scalar(select(Policy).where(Policy.deployed.is_(True))) or make_policy(db)
    for p in prompts:
        make_completions(db, p, policy, k)
    return ps, prompts, policy

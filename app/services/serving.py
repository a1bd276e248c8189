"""Which completions a rank task shows: the one rule, written once in SQL.

Regular prompts: K ready completions of ONE policy, the deployed one if it has K ready
completions of the prompt, else the newest policy that has K; the oldest K of it, so
overlapping labelers see the same. The slots checked are that policy's
(app/services/slots.py). Gold prompts: exactly the gold ranking's completions, whatever
is deployed; the policy is that of the first.

:func:`served_policy` is the rule as an SQL expression per prompt. :func:`served_pairs`
applies it to a whole set (the claim queries and the labeler's progress join on it), and
:func:`served_completions` to the one prompt a claim has locked.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Integer, bindparam, case, func, select
from sqlalchemy.orm import Session, aliased

from app.models import Completion, Policy, Prompt, PromptSet


def served_policy(prompt: Any, k: Any) -> ColumnElement[Any]:
    """Per prompt (``prompt``: Prompt or an alias, correlated): the id of the policy whose
    completions a rank task shows, or NULL where no policy has ``k`` ready ones."""
    c, d, pol = aliased(Completion), aliased(Completion), aliased(Policy)
    deployed = select(Policy.id).where(Policy.deployed.is_(True)).scalar_subquery()
    deployed_ready = (
        select(func.count(d.id))
        .where(d.prompt_id == prompt.id, d.policy_id == deployed, d.status == "ready")
        .correlate(prompt)
        .scalar_subquery()
    )
    newest_with_k = (
        select(c.policy_id)
        .join(pol, pol.id == c.policy_id)
        .where(c.prompt_id == prompt.id, c.status == "ready")
        .group_by(c.policy_id, pol.version)
        .having(func.count(c.id) >= k)
        .order_by(pol.version.desc())
        .limit(1)
        .correlate(prompt)
        .scalar_subquery()
    )
    return case((deployed_ready >= k, deployed), else_=newest_with_k)


def served_pairs(ps: PromptSet | Any) -> Any:
    """CTE (``prompt_id``, ``policy_id``) per regular prompt of ``ps`` that can be ranked
    now, with its :func:`served_policy`. Prompts where no policy has K are absent. A CTE,
    so a statement that refers to it more than once computes it once. ``ps`` may stand in
    bind parameters for the set's ``id`` and ``k``."""
    p = aliased(Prompt)
    per_prompt = (
        select(p.id.label("prompt_id"), served_policy(p, ps.k).label("policy_id"))
        .where(p.prompt_set_id == ps.id, p.is_gold.is_(False))
        # OFFSET 0 keeps the database from inlining this subquery into the outer query,
        # where the policy expression would be evaluated once per reference, not per prompt.
        .offset(0)
        .subquery("per_prompt")
    )
    return (
        select(per_prompt.c.prompt_id, per_prompt.c.policy_id)
        .where(per_prompt.c.policy_id.is_not(None))
        .cte("served")
    )


def has_k_ready_of(k: int, policy_id: int) -> ColumnElement[bool]:
    """Per prompt (correlated to ``Prompt``): it has ``k`` ready completions of ``policy_id``."""
    c = aliased(Completion)
    ready = (
        select(func.count(c.id))
        .where(c.prompt_id == Prompt.id, c.policy_id == policy_id, c.status == "ready")
        .correlate_except(c)
        .scalar_subquery()
    )
    return ready >= k


def _one_prompt_statement() -> Any:
    """The oldest K ready completions (id, policy) of the served policy of one prompt.
    Built once (bind parameters ``prompt_id``, ``k``): claims call it under a lock."""
    k: Any = bindparam("k", type_=Integer)
    prompt_id = bindparam("prompt_id", type_=Integer)
    p = aliased(Prompt)
    policy = select(served_policy(p, k)).where(p.id == prompt_id).scalar_subquery()
    return (
        select(Completion.id, Completion.policy_id)
        .where(Completion.prompt_id == prompt_id, Completion.status == "ready", Completion.policy_id == policy)
        .order_by(Completion.id)
        .limit(k)
    )


_ONE_PROMPT = _one_prompt_statement()


def served_completions(db: Session, prompt: Prompt, k: int) -> tuple[int | None, list[int]] | None:
    """(policy id, completion ids) a rank task on ``prompt`` shows now, or None."""
    if prompt.is_gold:
        ids = [cid for group in (prompt.gold_ranking or []) for cid in group]
        found = dict(
            db.execute(
                select(Completion.id, Completion.policy_id).where(
                    Completion.id.in_(ids), Completion.prompt_id == prompt.id
                )
            ).all()
        )
        if not ids or set(found) != set(ids) or len(found) != len(ids):
            return None
        return found[ids[0]], ids
    rows = db.execute(_ONE_PROMPT, {"prompt_id": prompt.id, "k": k}).all()
    if len(rows) < k:
        return None
    return rows[0].policy_id, [cid for cid, _ in rows]

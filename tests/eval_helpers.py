"""Builders for evaluation tests: validation prompts, policies and their evaluation samples."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.models import Policy, Prompt, PromptSet
from app.services import evaluations
from tests.factories import make_policy, make_prompt_set, make_prompts


@dataclass
class EvalSetup:
    prompt_set_id: int
    prompt_ids: list[int]
    policy_ids: list[int]


def eval_setup(
    db: Session, *, n_prompts: int = 6, n_policies: int = 2, samples: bool = True, per_pair: int = 1, name: str = "evalset"
) -> EvalSetup:
    """A set with ``n_prompts`` validation prompts, ``n_policies`` ready policies and (when
    ``samples``) ``per_pair`` evaluation samples per prompt and policy. Sample texts name
    neither the policy nor its version."""
    ps: PromptSet = make_prompt_set(db, name, k=2)
    prompts: list[Prompt] = make_prompts(db, ps, [f"Question {i}: explain item {i}." for i in range(n_prompts)], split="validation")
    policies: list[Policy] = [make_policy(db, deployed=(i == 0), artifact_path=f"policies/p{i}") for i in range(n_policies)]
    if samples:
        add_samples(db, [p.id for p in prompts], [p.id for p in policies], per_pair)
    return EvalSetup(ps.id, [p.id for p in prompts], [p.id for p in policies])


def add_samples(db: Session, prompt_ids: list[int], policy_ids: list[int], per_pair: int = 1) -> None:
    rows = [
        {
            "prompt_id": prompt_id,
            "policy_id": policy_id,
            "sample_index": k,
            "text": f"Answer text number {j} for prompt {prompt_id}, draft {k}.",
            "seed": 1234 + k,
            "params": {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 16},
        }
        for prompt_id in prompt_ids
        for j, policy_id in enumerate(policy_ids)
        for k in range(per_pair)
    ]
    evaluations.add_samples(db, rows)

"""What each admin page shows: one function per page that gathers its view model.

The page routes (app/routes/pages/) parse the request, call one of these and render the
template with the dict it returns (plus a notice or an error). The People page's model is
``people.people_view``, the audit log's ``audit_view.page``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Completion, Policy, Prompt, PromptSet
from app.models.prompts import PROMPT_SET_STATUSES, SPLITS
from app.services import audit_view, evaluations, exports, policies, prompt_sets, stats, training, webhooks, workers
from app.services.rankings import positions

PROMPTS_PER_PAGE = 25


def dashboard(db: Session, heartbeat_timeout_s: float) -> dict[str, Any]:
    progress = stats.progress(db)
    sets = {ps.id: ps for ps in prompt_sets.list_prompt_sets(db)}
    all_workers = workers.list_workers(db)
    labelers, agreement = stats.labeler_stats(db)
    return {
        "progress": [p for p in progress if sets[p.prompt_set_id].status != "archived"],
        "deployed": policies.deployed_policy(db),
        "policy_count": db.scalar(select(func.count(Policy.id))) or 0,
        "workers": all_workers,
        "alive_ids": {w.id for w in all_workers if workers.is_alive(w, heartbeat_timeout_s)},
        "runs": training.list_runs(db, 6),
        "agreement": agreement,
        "labeler_count": sum(1 for s in labelers if s.role == "labeler" and s.is_active),
        "submissions": sum(s.submissions for s in labelers),
        "recent": audit_view.list_entries(db, limit=6),
        "webhook_deliveries": _summed(webhooks.delivery_counts(db).values()),
    }


def _summed(counts: Any) -> dict[str, int]:
    """Per-hook delivery counts by status, added up (empty without deliveries)."""
    total: dict[str, int] = defaultdict(int)
    for per_hook in counts:
        for status, n in per_hook.items():
            total[status] += n
    return dict(total)


def prompt_sets_list(db: Session) -> dict[str, Any]:
    return {
        "sets": prompt_sets.list_prompt_sets(db),
        "progress": {p.prompt_set_id: p for p in stats.progress(db)},
        "statuses": PROMPT_SET_STATUSES,
    }


def prompt_set(
    db: Session, ps: PromptSet, *, split: str | None = None, search: str | None = None, page: int = 1
) -> dict[str, Any]:
    """One set: its progress, a page of its prompts (filtered by split and text) with their
    ready completions, its gold prompts, and the export kinds."""
    split = split if split in SPLITS else None
    page = max(page, 1)
    shown = prompt_sets.list_prompts(
        db, ps.id, split=split, search=search, limit=PROMPTS_PER_PAGE + 1, offset=(page - 1) * PROMPTS_PER_PAGE
    )
    ready_counts = dict(
        db.execute(
            select(Completion.prompt_id, func.count(Completion.id))
            .where(Completion.prompt_id.in_([p.id for p in shown]), Completion.status == "ready")
            .group_by(Completion.prompt_id)
        ).all()
    ) if shown else {}
    (progress,) = stats.progress(db, ps.id) or [stats.SetProgress(ps.id, ps.name, ps.status, ps.k, ps.overlap)]
    return {
        "ps": ps,
        "progress": progress,
        "statuses": PROMPT_SET_STATUSES,
        "prompts": shown[:PROMPTS_PER_PAGE],
        "has_more": len(shown) > PROMPTS_PER_PAGE,
        "page": page,
        "split": split,
        "q": search or "",
        "ready_counts": ready_counts,
        "gold_prompts": prompt_sets.list_prompts(db, ps.id, gold=True, limit=100),
        "export_kinds": exports.KINDS,
    }


def prompt(db: Session, prompt: Prompt) -> dict[str, Any]:
    """One prompt: its completions (with policy versions) and its gold ranking's places."""
    rows = db.execute(
        select(Completion, Policy.version)
        .join(Policy, Policy.id == Completion.policy_id)
        .where(Completion.prompt_id == prompt.id)
        .order_by(Completion.status, Policy.version.desc(), Completion.id)
    ).all()
    return {
        "prompt": prompt,
        "ps": prompt.prompt_set,
        "completions": rows,
        "gold_pos": positions(prompt.gold_ranking or []),
    }


def quality(db: Session, set_id: int | None) -> dict[str, Any]:
    """The labeler table (in one set, or all) with agreement, gold accuracy and progress."""
    if set_id is not None:
        prompt_sets.get_prompt_set(db, set_id)
    labelers, agreement = stats.labeler_stats(db, set_id)
    gold_values = sorted(s.gold_accuracy for s in labelers if s.gold_accuracy is not None)
    return {
        "labelers": labelers,
        "agreement": agreement,
        "sets": prompt_sets.list_prompt_sets(db),
        "set_id": set_id,
        "gold_median": gold_values[len(gold_values) // 2] if gold_values else None,
        "progress": stats.progress(db, set_id),
    }


def lineage(items: list[Policy]) -> list[tuple[Policy, int]]:
    """Policies in tree order (parents before children) with their depth."""
    ids = {p.id for p in items}
    children: dict[int | None, list[Policy]] = defaultdict(list)
    for p in sorted(items, key=lambda p: p.version):
        children[p.parent_id if p.parent_id in ids else None].append(p)
    out: list[tuple[Policy, int]] = []

    def walk(parent: int | None, depth: int) -> None:
        for p in children.get(parent, []):
            out.append((p, depth))
            walk(p.id, depth + 1)

    walk(None, 0)
    return out


def policies_page(db: Session) -> dict[str, Any]:
    items = policies.list_policies(db)
    return {
        "policies": items,
        "lineage": lineage(items),
        "versions": {p.id: p.version for p in items},
        "deployed": policies.deployed_policy(db),
        "verdicts": evaluations.policy_verdicts(db, items),
    }

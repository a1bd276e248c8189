"""Direct-to-database builders for submitted work (tasks, rankings, demonstrations, skips),
used by the admin tests (stats, exports, requeue) to set up what labelers would create."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from app.models import Demonstration, Prompt, Ranking, Task
from app.models.base import utcnow


def add_ranking(
    db: Session,
    prompt: Prompt,
    labeler_id: int,
    groups: list[list[int]],
    *,
    ratings: dict | None = None,
    seconds: float | None = 30.0,
    created_at=None,  # type: ignore[no-untyped-def]
) -> Ranking:
    """A submitted rank task and its ranking (best-first groups of completion ids)."""
    now = created_at or utcnow()
    ids = [cid for g in groups for cid in g]
    task = Task(
        prompt_id=prompt.id, prompt_set_id=prompt.prompt_set_id, labeler_id=labeler_id, kind="rank",
        status="submitted", completion_ids=ids, lease_expires_at=now + timedelta(minutes=30),
        created_at=now - timedelta(seconds=seconds or 0), submitted_at=now,
    )
    db.add(task)
    db.flush()
    ranking = Ranking(
        task_id=task.id, prompt_id=prompt.id, labeler_id=labeler_id, ranking=groups, ratings=ratings or {},
        time_spent_s=seconds, payload_hash=f"h{task.id}", created_at=now,
    )
    db.add(ranking)
    db.flush()
    return ranking


def add_demonstration(db: Session, prompt: Prompt, labeler_id: int, text: str, seconds: float = 60.0) -> Demonstration:
    now = utcnow()
    task = Task(
        prompt_id=prompt.id, prompt_set_id=prompt.prompt_set_id, labeler_id=labeler_id, kind="demonstrate",
        status="submitted", completion_ids=[], lease_expires_at=now + timedelta(minutes=30),
        created_at=now - timedelta(seconds=seconds), submitted_at=now,
    )
    db.add(task)
    db.flush()
    demo = Demonstration(
        task_id=task.id, prompt_id=prompt.id, labeler_id=labeler_id, text=text, time_spent_s=seconds,
        payload_hash=f"d{task.id}",
    )
    db.add(demo)
    db.flush()
    return demo


def add_skip(db: Session, prompt: Prompt, labeler_id: int) -> Task:
    now = utcnow()
    task = Task(
        prompt_id=prompt.id, prompt_set_id=prompt.prompt_set_id, labeler_id=labeler_id, kind="rank",
        status="skipped", completion_ids=[], lease_expires_at=now, skip_reason="unclear", submitted_at=now,
    )
    db.add(task)
    db.flush()
    return task

"""Send a labeler's work back: their active rankings (and optionally demonstrations) become
``requeued``, and so do the tasks they came from, so those slots count as open again and
other labelers are served the prompts. Requeued rows stay in the database (for the audit
trail and the labeler's history) but leave exports, progress and training data.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import chunks
from app.models import Demonstration, Prompt, Ranking, SubmissionStatus, Task, User
from app.schemas.stats import RequeueOut as RequeueResult
from app.services import audit, conversations
from app.services.task_states import REQUEUED, entered_from
from app.services.users import get_user


def requeue_labeler(
    db: Session,
    actor: User | None,
    user_id: int,
    prompt_set_id: int | None = None,
    include_demonstrations: bool = False,
) -> RequeueResult:
    """Mark the labeler's active rankings (in one set, or all) and their tasks as requeued."""
    labeler = get_user(db, user_id)
    in_set = select(Prompt.id).where(Prompt.prompt_set_id == prompt_set_id)
    counts = {}
    task_ids: list[int] = []
    ranked_prompts: set[int] = set()
    models: list[type[Ranking] | type[Demonstration]] = [Ranking]
    if include_demonstrations:
        models.append(Demonstration)
    for model in models:
        q = select(model.id, model.task_id, model.prompt_id).where(model.labeler_id == labeler.id, model.status == SubmissionStatus.ACTIVE)
        if prompt_set_id is not None:
            q = q.where(model.prompt_id.in_(in_set))
        rows = db.execute(q).all()
        counts[model] = len(rows)
        ids = [r.id for r in rows]
        task_ids += [r.task_id for r in rows if r.task_id is not None]
        if model is Ranking:
            ranked_prompts.update(r.prompt_id for r in rows)
        for chunk in chunks(ids, 1000):
            db.execute(
                update(model)
                .where(model.id.in_(chunk))
                .values(status=SubmissionStatus.REQUEUED.value)
                .execution_options(synchronize_session=False)
            )
    for chunk in chunks(task_ids, 1000):
        db.execute(
            update(Task)
            .where(Task.id.in_(chunk), Task.status.in_(entered_from(REQUEUED)))
            .values(status=REQUEUED.value)
            .execution_options(synchronize_session=False)
        )
    conversations.refresh_best(db, ranked_prompts)  # requeued rankings no longer vote for a best reply
    result = RequeueResult(
        rankings=counts.get(Ranking, 0), demonstrations=counts.get(Demonstration, 0), tasks=len(task_ids)
    )
    audit.record(
        db, actor, "labeler.requeue", "user", labeler.id,
        username=labeler.username, prompt_set_id=prompt_set_id,
        rankings=result.rankings, demonstrations=result.demonstrations, tasks=result.tasks,
    )
    db.flush()
    db.expire_all()
    return result

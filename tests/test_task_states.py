"""The task state machine (app/services/task_states.py) and the torch-free ranking pairs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.models import Task, TaskStatus
from app.models.base import utcnow
from app.services.errors import Conflict
from app.services.rankings import pair_count, pairs_from_ranking
from app.services.task_states import EXPIRED, LEASED, REQUEUED, SKIPPED, SUBMITTED, enter_state, entered_from


def test_allowed_changes_and_their_side_effects() -> None:
    now = utcnow()
    task = Task(id=1, status=LEASED.value, lease_expires_at=now)
    enter_state(task, SUBMITTED, submitted_at=now)
    assert task.status == "submitted" and task.submitted_at == now
    enter_state(task, LEASED, lease_expires_at=now + timedelta(minutes=5))  # undo
    assert task.status == "leased" and task.submitted_at is None
    enter_state(task, EXPIRED)
    enter_state(task, SKIPPED)
    for new in TaskStatus:
        with pytest.raises(Conflict, match="is skipped and cannot become"):
            enter_state(task, new)
    assert entered_from(REQUEUED) == ("submitted",) and entered_from(EXPIRED) == ("leased",)


def test_pairs_from_ranking_matches_the_pair_count() -> None:
    ranking = [[0], [2, 1], [3]]
    assert pairs_from_ranking(ranking) == [(0, 2), (0, 1), (0, 3), (2, 3), (1, 3)]
    assert pair_count(ranking) == 5

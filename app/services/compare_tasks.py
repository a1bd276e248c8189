"""Compare tasks: blind A/B judgments of an evaluation's comparison slots.

A compare task is a ``tasks`` row of kind ``compare`` (so leases, skips and the labeler's
history work as for rank tasks) plus a :class:`~app.models.CompareTask` row saying which
comparison it serves and which sample is on side A and on side B.

Slots: a comparison takes at most ``Evaluation.overlap`` tasks that are submitted or hold a
live lease (the same rule as rank slots). A labeler never gets a comparison for which they
hold a task that has not expired (submitted, skipped, requeued, or leased and live). Gold
comparisons are served at ``settings.gold_rate``, once per labeler, not limited by overlap.

Sides: the first task of a slot puts policy x on side A when the slot's ``x_first`` (which
is balanced over each pair's slots at creation), and later tasks of the slot alternate, so
each policy is on side A about half the time, for every pair and every labeler. Nothing a
labeler receives names a policy: the task holds the prompt and two texts labelled a and b.

Claims are race-free as rank claims are (see app/services/tasks.py): PostgreSQL locks the
labeler's user row, then a candidate comparison row ``FOR UPDATE SKIP LOCKED`` and recounts
its slots under the lock; SQLite runs the whole claim in one ``BEGIN IMMEDIATE``
transaction. Run every function here inside :func:`app.services.tasks.transact`.

The code: claiming, viewing, renewing and progress in app/services/compare_claims.py;
answering (submit, undo) in app/services/compare_answers.py. This module is their one
import for routes and tests.
"""

from app.services.compare_answers import submit_comparison, undo_judgment, validate_ratings
from app.services.compare_claims import SIDES, next_task, progress, renew_lease, task_view

__all__ = [
    "SIDES", "next_task", "progress", "renew_lease", "submit_comparison", "task_view", "undo_judgment",
    "validate_ratings",
]

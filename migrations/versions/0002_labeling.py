"""labeling additions: rank tasks record the policy whose completions they show

Rank slots are counted per (prompt, policy), so each redeployed policy's completions of a
prompt get fresh rankings. Existing rank tasks are backfilled with the policy of their
first completion.

Revision ID: 0002
Revises: 0001
"""

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK_NAME = "fk_tasks_policy_id_policies"
INDEX_NAME = "ix_tasks_policy_prompt_kind_status"
BATCH = 1000


@contextmanager
def _sqlite_foreign_keys_off() -> Iterator[None]:
    """Batch mode on SQLite recreates "tasks" (copy, DROP, rename). With foreign keys on,
    that DROP deletes every row first and the deletes cascade into rankings and
    demonstrations, so enforcement is off around it. The pragma only takes effect outside
    a transaction, hence the autocommit blocks (they commit the revisions before this one).
    """
    if op.get_bind().dialect.name != "sqlite":
        yield
        return
    ctx = op.get_context()
    with ctx.autocommit_block():
        op.execute("PRAGMA foreign_keys=OFF")
    try:
        if op.get_bind().exec_driver_sql("PRAGMA foreign_keys").scalar():
            raise RuntimeError(
                "could not turn SQLite foreign keys off (inside an outer transaction?); "
                "recreating the tasks table now would cascade-delete rankings and demonstrations"
            )
        yield
    finally:
        with ctx.autocommit_block():
            op.execute("PRAGMA foreign_keys=ON")


def upgrade() -> None:
    with _sqlite_foreign_keys_off():
        with op.batch_alter_table("tasks", schema=None) as batch_op:
            batch_op.add_column(sa.Column("policy_id", sa.Integer(), nullable=True))
            batch_op.create_foreign_key(FK_NAME, "policies", ["policy_id"], ["id"], ondelete="SET NULL")
            batch_op.create_index(INDEX_NAME, ["policy_id", "prompt_id", "kind", "status"], unique=False)
    _backfill()


def _backfill() -> None:
    """policy_id of every rank task := the policy of its first completion id (in batches)."""
    bind = op.get_bind()
    tasks = sa.table(
        "tasks",
        sa.column("id", sa.Integer()),
        sa.column("kind", sa.String()),
        sa.column("completion_ids", sa.JSON()),
        sa.column("policy_id", sa.Integer()),
    )
    completions = sa.table("completions", sa.column("id", sa.Integer()), sa.column("policy_id", sa.Integer()))
    last_id = 0
    while True:
        rows = bind.execute(
            sa.select(tasks.c.id, tasks.c.completion_ids)
            .where(tasks.c.kind == "rank", tasks.c.policy_id.is_(None), tasks.c.id > last_id)
            .order_by(tasks.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        last_id = rows[-1][0]
        first: dict[int, int] = {}
        for task_id, ids in rows:
            if isinstance(ids, str):
                ids = json.loads(ids)
            if ids:
                first[task_id] = int(ids[0])
        policy_of = dict(
            bind.execute(
                sa.select(completions.c.id, completions.c.policy_id).where(
                    completions.c.id.in_(sorted(set(first.values())))
                )
            ).all()
        ) if first else {}
        updates = [
            {"task_id": task_id, "value": policy_of[cid]} for task_id, cid in first.items() if cid in policy_of
        ]
        if updates:
            bind.execute(
                tasks.update().where(tasks.c.id == sa.bindparam("task_id")).values(policy_id=sa.bindparam("value")),
                updates,
            )


def downgrade() -> None:
    with _sqlite_foreign_keys_off():
        with op.batch_alter_table("tasks", schema=None) as batch_op:
            batch_op.drop_index(INDEX_NAME)
            batch_op.drop_constraint(FK_NAME, type_="foreignkey")
            batch_op.drop_column("policy_id")

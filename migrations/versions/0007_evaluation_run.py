"""evaluations: the training run whose deploy waits on the evaluation (evaluate_with_humans)

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN (not batch mode, which rebuilds the table on SQLite and would
    # cascade to its children); no foreign key, which SQLite cannot add to a table.
    op.add_column("evaluations", sa.Column("training_run_id", sa.Integer(), nullable=True))
    op.create_index("ix_evaluations_training_run_id", "evaluations", ["training_run_id"])


def downgrade() -> None:
    op.drop_index("ix_evaluations_training_run_id", table_name="evaluations")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_column("training_run_id")

"""training rounds: deploy "force" (deploy past the deploy gate)

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN (not batch mode): on SQLite batch mode rebuilds the table, and
    # dropping the old one would cascade to run_logs and run_metrics.
    op.add_column("training_runs", sa.Column("deploy_force", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.drop_column("deploy_force")

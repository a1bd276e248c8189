"""red team: when an admin promoted a red-team conversation set into training data, and who

Revision ID: 0011
Revises: 0010

Plain ADD COLUMN / DROP COLUMN on ``prompt_sets`` (not batch mode), as in 0010: on SQLite
batch mode rebuilds the table, which drops the slots triggers of migration 0008 on it and
cascades the old table's deletion to the prompts. SQLite takes the foreign key inline in
ADD COLUMN (alembic cannot add it there) and drops it with the column. The key has no ON
DELETE rule: SQLAlchemy reads none back from an inline SQLite key, so a rule would show as
drift; users are deactivated, never deleted.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK_NAME = "fk_prompt_sets_red_team_promoted_by_id_users"


def upgrade() -> None:
    op.add_column("prompt_sets", sa.Column("red_team_promoted_at", sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name == "sqlite":  # alembic's add_column cannot add the constraint there
        op.execute(
            "ALTER TABLE prompt_sets ADD COLUMN red_team_promoted_by_id INTEGER "
            f"CONSTRAINT {FK_NAME} REFERENCES users (id)"
        )
        return
    op.add_column("prompt_sets", sa.Column("red_team_promoted_by_id", sa.Integer(), nullable=True))
    op.create_foreign_key(FK_NAME, "prompt_sets", "users", ["red_team_promoted_by_id"], ["id"])


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(FK_NAME, "prompt_sets", type_="foreignkey")
    op.drop_column("prompt_sets", "red_team_promoted_by_id")
    op.drop_column("prompt_sets", "red_team_promoted_at")

"""conversations: prompt sets of kind ``conversation`` with their settings, the message
trees (``conversation_nodes``), and ``tasks.node_id`` for continue tasks

Revision ID: 0010
Revises: 0009

Plain ADD COLUMN / DROP COLUMN on ``tasks`` and ``prompt_sets`` (not batch mode): on SQLite
batch mode rebuilds the table, which drops the slots triggers of migration 0008 and
cascades the old table's deletion to the rows that reference it. ``tasks.node_id`` has
no foreign key for the same reason (SQLite cannot drop a column a constraint names).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("prompt_sets", sa.Column("kind", sa.String(length=16), nullable=False, server_default="prompts"))
    op.add_column("prompt_sets", sa.Column("conversation", sa.JSON(), nullable=True))
    op.add_column("tasks", sa.Column("node_id", sa.Integer(), nullable=True))
    op.create_index("ix_tasks_node_kind", "tasks", ["node_id", "kind"])
    op.create_table(
        "conversation_nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prompt_set_id", sa.Integer(), nullable=False),
        sa.Column("root_id", sa.Integer(), nullable=True),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("context_chars", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=True),
        sa.Column("completion_id", sa.Integer(), nullable=True),
        sa.Column("demonstration_id", sa.Integer(), nullable=True),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("author_id", sa.Integer(), nullable=True),
        sa.Column("time_spent_s", sa.Float(), nullable=True),
        sa.Column("best_votes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["prompt_set_id"], ["prompt_sets.id"], name=op.f("fk_conversation_nodes_prompt_set_id_prompt_sets"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["root_id"], ["conversation_nodes.id"], name=op.f("fk_conversation_nodes_root_id_conversation_nodes"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["conversation_nodes.id"],
            name=op.f("fk_conversation_nodes_parent_id_conversation_nodes"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["prompt_id"], ["prompts.id"], name=op.f("fk_conversation_nodes_prompt_id_prompts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["completion_id"], ["completions.id"], name=op.f("fk_conversation_nodes_completion_id_completions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["demonstration_id"], ["demonstrations.id"],
            name=op.f("fk_conversation_nodes_demonstration_id_demonstrations"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_conversation_nodes_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["author_id"], ["users.id"], name=op.f("fk_conversation_nodes_author_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversation_nodes")),
        sa.UniqueConstraint("prompt_id", name=op.f("uq_conversation_nodes_prompt_id")),
        sa.UniqueConstraint("completion_id", name=op.f("uq_conversation_nodes_completion_id")),
        sa.UniqueConstraint("demonstration_id", name=op.f("uq_conversation_nodes_demonstration_id")),
        sa.UniqueConstraint("task_id", name=op.f("uq_conversation_nodes_task_id")),
    )
    op.create_index("ix_conversation_nodes_parent", "conversation_nodes", ["parent_id"])
    op.create_index("ix_conversation_nodes_root_id", "conversation_nodes", ["root_id"])
    op.create_index("ix_conversation_nodes_set_role", "conversation_nodes", ["prompt_set_id", "role", "best_votes"])


def downgrade() -> None:
    op.drop_table("conversation_nodes")
    op.drop_index("ix_tasks_node_kind", table_name="tasks")
    op.drop_column("tasks", "node_id")
    op.drop_column("prompt_sets", "conversation")
    op.drop_column("prompt_sets", "kind")

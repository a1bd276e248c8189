"""human evaluation of policy versions: evaluations, their samples, comparison slots,
compare tasks (which sample each side of a ``tasks`` row of kind ``compare`` shows) and
judgments

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('evaluations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('guidelines', sa.Text(), nullable=False),
    sa.Column('policy_ids', sa.JSON(), nullable=False),
    sa.Column('prompt_set_ids', sa.JSON(), nullable=False),
    sa.Column('split', sa.String(length=16), nullable=True),
    sa.Column('prompt_ids', sa.JSON(), nullable=False),
    sa.Column('per_pair', sa.Integer(), nullable=False),
    sa.Column('overlap', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['created_by_id'], ['users.id'], name=op.f('fk_evaluations_created_by_id_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_evaluations')),
    sa.UniqueConstraint('name', name=op.f('uq_evaluations_name'))
    )
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_evaluations_status'), ['status'], unique=False)

    op.create_table('evaluation_comparisons',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('evaluation_id', sa.Integer(), nullable=False),
    sa.Column('prompt_id', sa.Integer(), nullable=False),
    sa.Column('policy_x_id', sa.Integer(), nullable=False),
    sa.Column('policy_y_id', sa.Integer(), nullable=False),
    sa.Column('sample_index', sa.Integer(), nullable=False),
    sa.Column('x_first', sa.Boolean(), nullable=False),
    sa.Column('gold_outcome', sa.String(length=16), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['evaluation_id'], ['evaluations.id'], name=op.f('fk_evaluation_comparisons_evaluation_id_evaluations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['policy_x_id'], ['policies.id'], name=op.f('fk_evaluation_comparisons_policy_x_id_policies'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['policy_y_id'], ['policies.id'], name=op.f('fk_evaluation_comparisons_policy_y_id_policies'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['prompt_id'], ['prompts.id'], name=op.f('fk_evaluation_comparisons_prompt_id_prompts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_evaluation_comparisons')),
    sa.UniqueConstraint('evaluation_id', 'prompt_id', 'policy_x_id', 'policy_y_id', 'sample_index', name='uq_evaluation_comparisons_slot')
    )
    with op.batch_alter_table('evaluation_comparisons', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_evaluation_comparisons_evaluation_id'), ['evaluation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_evaluation_comparisons_prompt_id'), ['prompt_id'], unique=False)

    op.create_table('evaluation_samples',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('prompt_id', sa.Integer(), nullable=False),
    sa.Column('policy_id', sa.Integer(), nullable=False),
    sa.Column('sample_index', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=True),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('token_count', sa.Integer(), nullable=False),
    sa.Column('finish_reason', sa.String(length=16), nullable=False),
    sa.Column('gen_time_s', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['policy_id'], ['policies.id'], name=op.f('fk_evaluation_samples_policy_id_policies'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['prompt_id'], ['prompts.id'], name=op.f('fk_evaluation_samples_prompt_id_prompts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_evaluation_samples')),
    sa.UniqueConstraint('prompt_id', 'policy_id', 'sample_index', name=op.f('uq_evaluation_samples_prompt_id_policy_id_sample_index'))
    )
    with op.batch_alter_table('evaluation_samples', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_evaluation_samples_policy_id'), ['policy_id'], unique=False)

    op.create_table('compare_tasks',
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('evaluation_id', sa.Integer(), nullable=False),
    sa.Column('comparison_id', sa.Integer(), nullable=False),
    sa.Column('sample_a_id', sa.Integer(), nullable=False),
    sa.Column('sample_b_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['comparison_id'], ['evaluation_comparisons.id'], name=op.f('fk_compare_tasks_comparison_id_evaluation_comparisons'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['evaluation_id'], ['evaluations.id'], name=op.f('fk_compare_tasks_evaluation_id_evaluations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['sample_a_id'], ['evaluation_samples.id'], name=op.f('fk_compare_tasks_sample_a_id_evaluation_samples'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['sample_b_id'], ['evaluation_samples.id'], name=op.f('fk_compare_tasks_sample_b_id_evaluation_samples'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_compare_tasks_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('task_id', name=op.f('pk_compare_tasks'))
    )
    with op.batch_alter_table('compare_tasks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_compare_tasks_comparison_id'), ['comparison_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_compare_tasks_evaluation_id'), ['evaluation_id'], unique=False)

    op.create_table('comparison_judgments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('evaluation_id', sa.Integer(), nullable=False),
    sa.Column('comparison_id', sa.Integer(), nullable=False),
    sa.Column('prompt_id', sa.Integer(), nullable=False),
    sa.Column('labeler_id', sa.Integer(), nullable=False),
    sa.Column('policy_a_id', sa.Integer(), nullable=False),
    sa.Column('policy_b_id', sa.Integer(), nullable=False),
    sa.Column('choice', sa.String(length=16), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('ratings', sa.JSON(), nullable=False),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.Column('time_spent_s', sa.Float(), nullable=True),
    sa.Column('payload_hash', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['comparison_id'], ['evaluation_comparisons.id'], name=op.f('fk_comparison_judgments_comparison_id_evaluation_comparisons'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['evaluation_id'], ['evaluations.id'], name=op.f('fk_comparison_judgments_evaluation_id_evaluations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['labeler_id'], ['users.id'], name=op.f('fk_comparison_judgments_labeler_id_users'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['policy_a_id'], ['policies.id'], name=op.f('fk_comparison_judgments_policy_a_id_policies'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['policy_b_id'], ['policies.id'], name=op.f('fk_comparison_judgments_policy_b_id_policies'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['prompt_id'], ['prompts.id'], name=op.f('fk_comparison_judgments_prompt_id_prompts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_comparison_judgments_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_comparison_judgments')),
    sa.UniqueConstraint('task_id', name=op.f('uq_comparison_judgments_task_id'))
    )
    with op.batch_alter_table('comparison_judgments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_comparison_judgments_comparison_id'), ['comparison_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_comparison_judgments_created_at'), ['created_at'], unique=False)
        batch_op.create_index('ix_comparison_judgments_evaluation_status', ['evaluation_id', 'status'], unique=False)
        batch_op.create_index(batch_op.f('ix_comparison_judgments_labeler_id'), ['labeler_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('comparison_judgments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_comparison_judgments_labeler_id'))
        batch_op.drop_index('ix_comparison_judgments_evaluation_status')
        batch_op.drop_index(batch_op.f('ix_comparison_judgments_created_at'))
        batch_op.drop_index(batch_op.f('ix_comparison_judgments_comparison_id'))

    op.drop_table('comparison_judgments')
    with op.batch_alter_table('compare_tasks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_compare_tasks_evaluation_id'))
        batch_op.drop_index(batch_op.f('ix_compare_tasks_comparison_id'))

    op.drop_table('compare_tasks')
    with op.batch_alter_table('evaluation_samples', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_evaluation_samples_policy_id'))

    op.drop_table('evaluation_samples')
    with op.batch_alter_table('evaluation_comparisons', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_evaluation_comparisons_prompt_id'))
        batch_op.drop_index(batch_op.f('ix_evaluation_comparisons_evaluation_id'))

    op.drop_table('evaluation_comparisons')
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_evaluations_status'))

    op.drop_table('evaluations')

"""fine-tune jobs

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30

DP fine-tune jobs (issue 12): what each job trains (project, dataset, base model, epsilon/delta or a
non-private override), its status and progress, the ledger spend that paid for it, the model it
produced and its audit reports (canary exposure, membership inference). Mutable: status and
progress change as it runs; each transition is on the audit chain.
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('finetune_job',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=True),
    sa.Column('dataset', sa.String(length=128), nullable=False),
    sa.Column('base_model', sa.String(length=256), nullable=False),
    sa.Column('epsilon', sa.Float(), nullable=True),
    sa.Column('delta', sa.Float(), nullable=False),
    sa.Column('non_private', sa.Boolean(), nullable=False),
    sa.Column('override_by', sa.String(length=64), nullable=True),
    sa.Column('params', sa.Text(), nullable=False),
    sa.Column('examples', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('total_steps', sa.Integer(), nullable=False),
    sa.Column('loss', sa.Float(), nullable=True),
    sa.Column('epsilon_spent', sa.Float(), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('spend_id', sa.String(length=32), nullable=True),
    sa.Column('model_name', sa.String(length=128), nullable=True),
    sa.Column('model_dir', sa.Text(), nullable=True),
    sa.Column('exposure_report', sa.Text(), nullable=True),
    sa.Column('membership_report', sa.Text(), nullable=True),
    sa.Column('requested_by', sa.String(length=64), nullable=False),
    sa.Column('via', sa.String(length=16), nullable=False),
    sa.Column('worker', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['dataset_id'], ['dataset.id'], ),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('finetune_job', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_finetune_job_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_finetune_job_status'), ['status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('finetune_job', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_finetune_job_status'))
        batch_op.drop_index(batch_op.f('ix_finetune_job_project_id'))
    op.drop_table('finetune_job')

"""per-model tiers in grants; withdrawn models

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30

A project's tier for one model where it differs from its grant's tier (issue 14: tiers per project
and model). Grants without rows here keep one tier for every model, as before. And a model taken
out of service by an operator (`enclave model withdraw`).
"""
from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('grant_model_tier',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('tier', sa.String(length=16), nullable=False),
    sa.Column('set_by', sa.String(), nullable=False),
    sa.Column('set_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('project_id', 'model')
    )
    op.create_index(op.f('ix_grant_model_tier_project_id'), 'grant_model_tier', ['project_id'], unique=False)
    op.add_column('model_entry', sa.Column('withdrawn_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('model_entry', sa.Column('withdrawn_by', sa.String(length=64), nullable=True))
    op.add_column('model_entry', sa.Column('withdrawn_reason', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('model_entry') as batch:
        batch.drop_column('withdrawn_reason')
        batch.drop_column('withdrawn_by')
        batch.drop_column('withdrawn_at')
    op.drop_index(op.f('ix_grant_model_tier_project_id'), table_name='grant_model_tier')
    op.drop_table('grant_model_tier')

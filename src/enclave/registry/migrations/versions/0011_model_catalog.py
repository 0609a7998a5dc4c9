"""model catalog

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30

The models the gateway may serve (`model_entry`: directory, weights digest, parameters, stage,
card, risk checklist, owner project for a fine-tune), the append-only history of their stage steps
and incidents, and promotions waiting for a second operator's signature.
"""
from alembic import op
import sqlalchemy as sa

from enclave.registry.migrations.append_only import drop_append_only, install_append_only


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

# Spelled out rather than imported from enclave.registry.models: a migration must not change when
# the models do.
APPEND_ONLY_TABLES = ('model_stage_step', 'model_incident')


def upgrade() -> None:
    op.create_table('model_entry',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('directory', sa.Text(), nullable=False),
    sa.Column('weights_sha256', sa.String(length=64), nullable=False),
    sa.Column('parameters', sa.BigInteger(), nullable=False),
    sa.Column('stage', sa.String(length=16), nullable=False),
    sa.Column('stage_since', sa.DateTime(timezone=True), nullable=False),
    sa.Column('card', sa.Text(), nullable=False),
    sa.Column('card_meta', sa.Text(), nullable=False),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.Column('checklist', sa.Text(), nullable=False),
    sa.Column('checklist_signed_by', sa.String(length=64), nullable=True),
    sa.Column('checklist_signed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('base_model', sa.String(length=256), nullable=True),
    sa.Column('owner_project_id', sa.Integer(), nullable=True),
    sa.Column('non_private', sa.Boolean(), server_default='0', nullable=False),
    sa.Column('dp_epsilon', sa.Float(), nullable=True),
    sa.Column('dp_delta', sa.Float(), nullable=True),
    sa.Column('report', sa.Text(), nullable=False),
    sa.Column('onboarded_by', sa.String(length=64), nullable=False),
    sa.Column('onboarded_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['owner_project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    with op.batch_alter_table('model_entry', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_entry_owner_project_id'), ['owner_project_id'], unique=False)

    op.create_table('model_incident',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('stage', sa.String(length=16), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('reported_by', sa.String(length=64), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['model_entry.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('model_incident', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_incident_model_id'), ['model_id'], unique=False)

    op.create_table('model_promotion',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('from_stage', sa.String(length=16), nullable=False),
    sa.Column('to_stage', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('proposed_by', sa.String(length=64), nullable=False),
    sa.Column('proposed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('evidence_name', sa.String(length=255), nullable=False),
    sa.Column('evidence_sha256', sa.String(length=64), nullable=False),
    sa.Column('evidence', sa.Text(), nullable=False),
    sa.Column('incidents', sa.Text(), nullable=False),
    sa.Column('days_at_stage', sa.Float(), nullable=False),
    sa.Column('signed_by', sa.String(length=64), nullable=True),
    sa.Column('signed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('closed_reason', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['model_entry.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('model_promotion', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_promotion_model_id'), ['model_id'], unique=False)

    op.create_table('model_stage_step',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('from_stage', sa.String(length=16), nullable=True),
    sa.Column('to_stage', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('signed_by', sa.String(length=64), nullable=True),
    sa.Column('promotion_id', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['model_entry.id'], ),
    sa.ForeignKeyConstraint(['promotion_id'], ['model_promotion.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('model_stage_step', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_stage_step_model_id'), ['model_id'], unique=False)

    # After the indexes: SQLite's batch mode may copy a table, and a copy would lose its triggers.
    for table in APPEND_ONLY_TABLES:
        install_append_only(table)


def downgrade() -> None:
    for table in APPEND_ONLY_TABLES:
        drop_append_only(table)
    with op.batch_alter_table('model_stage_step', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_stage_step_model_id'))
    op.drop_table('model_stage_step')
    with op.batch_alter_table('model_promotion', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_promotion_model_id'))
    op.drop_table('model_promotion')
    with op.batch_alter_table('model_incident', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_incident_model_id'))
    op.drop_table('model_incident')
    with op.batch_alter_table('model_entry', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_entry_owner_project_id'))
    op.drop_table('model_entry')

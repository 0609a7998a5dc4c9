"""metering and model calls

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

Token accounts (total, per day, per minute), reservations for calls in flight, the record of
model calls, and the grant's cap on probability-bearing calls.
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('model_call',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('person_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('endpoint', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('outputs', sa.Text(), nullable=False),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('latency_ms', sa.Integer(), nullable=False),
    sa.Column('audit_seq', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['person_id'], ['person.id'], ),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('model_call', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_call_person_id'), ['person_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_model_call_project_id'), ['project_id'], unique=False)

    op.create_table('rate_window',
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('minute', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('project_id', 'minute')
    )
    op.create_table('reservation',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('person_id', sa.Integer(), nullable=False),
    sa.Column('endpoint', sa.String(length=32), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('tokens_reserved', sa.BigInteger(), nullable=False),
    sa.Column('tokens_charged', sa.BigInteger(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('settled_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['person_id'], ['person.id'], ),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('reservation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reservation_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_reservation_state'), ['state'], unique=False)

    op.create_table('usage_day',
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('tokens_used', sa.BigInteger(), nullable=False),
    sa.Column('tokens_reserved', sa.BigInteger(), nullable=False),
    sa.Column('logprob_calls', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('project_id', 'day')
    )
    op.create_table('usage_total',
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('tokens_used', sa.BigInteger(), nullable=False),
    sa.Column('tokens_reserved', sa.BigInteger(), nullable=False),
    sa.Column('calls', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('project_id')
    )
    with op.batch_alter_table('grant', schema=None) as batch_op:
        batch_op.add_column(sa.Column('logprob_calls_per_day', sa.Integer(), server_default='2000', nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('grant', schema=None) as batch_op:
        batch_op.drop_column('logprob_calls_per_day')

    op.drop_table('usage_total')
    op.drop_table('usage_day')
    with op.batch_alter_table('reservation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reservation_state'))
        batch_op.drop_index(batch_op.f('ix_reservation_project_id'))

    op.drop_table('reservation')
    op.drop_table('rate_window')
    with op.batch_alter_table('model_call', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_call_project_id'))
        batch_op.drop_index(batch_op.f('ix_model_call_person_id'))

    op.drop_table('model_call')

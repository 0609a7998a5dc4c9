"""gateway instances

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

Each running gateway registers as an instance with a heartbeat, and stamps the reservations it
opens with its id: when a gateway dies mid-call (SIGKILL, out of memory), any other gateway's
periodic sweep settles that instance's open reservations as soon as its heartbeat stops, instead
of leaving the grant locked until a restart long after. Rows from before have no instance.
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('gateway_instance',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('reservation', schema=None) as batch_op:
        batch_op.add_column(sa.Column('instance_id', sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f('ix_reservation_instance_id'), ['instance_id'], unique=False)
        batch_op.create_foreign_key('fk_reservation_instance_id_gateway_instance', 'gateway_instance',
                                    ['instance_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('reservation', schema=None) as batch_op:
        batch_op.drop_constraint('fk_reservation_instance_id_gateway_instance', type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_reservation_instance_id'))
        batch_op.drop_column('instance_id')

    op.drop_table('gateway_instance')

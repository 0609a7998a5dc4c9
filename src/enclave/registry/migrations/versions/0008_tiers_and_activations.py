"""tiers and activations

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30

Access tiers of the model API: each grant names its tier (`sample`, `score`, `internals`,
`finetune`); grants that exist get `score`, what they could do before. Reading activations has a
per-day byte budget (`grant.activation_bytes_per_day`), charged in `usage_day.activation_bytes`.
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

ACTIVATION_BYTES_PER_DAY = 16 * 1024**2


def upgrade() -> None:
    with op.batch_alter_table('grant', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tier', sa.String(length=16), server_default='score', nullable=False))
        batch_op.add_column(sa.Column('activation_bytes_per_day', sa.BigInteger(),
                                      server_default=str(ACTIVATION_BYTES_PER_DAY), nullable=False))
    with op.batch_alter_table('usage_day', schema=None) as batch_op:
        batch_op.add_column(sa.Column('activation_bytes', sa.BigInteger(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('usage_day', schema=None) as batch_op:
        batch_op.drop_column('activation_bytes')
    with op.batch_alter_table('grant', schema=None) as batch_op:
        batch_op.drop_column('activation_bytes_per_day')
        batch_op.drop_column('tier')

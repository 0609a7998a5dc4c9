"""notebook sessions, browser egress, work volumes

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

Notebook sessions are recorded in the registry (who, which project, image, mounts, limits, the
container's address and a digest of its hub token), with the bytes their servers sent towards
browsers, counted on the host and charged per project and day against the grant's new
`view_bytes_per_day`. Audit events are indexed by action and subject (looked up by the warden and
the review service). Work volumes are per person and project, and can be held (after a revocation
or a dataset's withdrawal) until an operator releases or destroys them; `work_bytes` limits them.
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('notebook_session',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('person_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('server_name', sa.String(length=255), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('container_id', sa.String(length=80), nullable=False),
    sa.Column('container_ip', sa.String(length=64), server_default='', nullable=False),
    sa.Column('token_sha256', sa.String(length=64), server_default='', nullable=False),
    sa.Column('image', sa.String(length=128), nullable=False),
    sa.Column('work_volume', sa.String(length=255), nullable=False),
    sa.Column('spec', sa.Text(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('stop_reason', sa.Text(), server_default='', nullable=False),
    sa.Column('egress_bytes', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('egress_counter', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('egress_audited', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('log_cursor', sa.String(length=40), server_default='', nullable=False),
    sa.ForeignKeyConstraint(['person_id'], ['person.id'], ),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('notebook_session', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_notebook_session_person_id'), ['person_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_notebook_session_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_notebook_session_container_ip'), ['container_ip'], unique=False)
        batch_op.create_index(batch_op.f('ix_notebook_session_token_sha256'), ['token_sha256'], unique=False)

    op.create_table('egress_day',
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('project_id', 'day')
    )

    op.create_table('work_volume',
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('person_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('state_reason', sa.Text(), server_default='', nullable=False),
    sa.Column('state_changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['person_id'], ['person.id'], ),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('name'),
    sa.UniqueConstraint('person_id', 'project_id', name='uq_work_volume_person_project')
    )
    with op.batch_alter_table('work_volume', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_work_volume_person_id'), ['person_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_work_volume_project_id'), ['project_id'], unique=False)

    # Plain CREATE INDEX, never a batch: SQLite's batch mode may copy the table, and the copy would
    # lose the triggers that keep the chain append-only.
    op.create_index('ix_audit_event_action', 'audit_event', ['action'], unique=False)
    op.create_index('ix_audit_event_subject', 'audit_event', ['subject'], unique=False)

    with op.batch_alter_table('grant', schema=None) as batch_op:
        batch_op.add_column(sa.Column('view_bytes_per_day', sa.BigInteger(), server_default=str(128 * 1024**2),
                                      nullable=False))
        batch_op.add_column(sa.Column('work_bytes', sa.BigInteger(), server_default=str(2 * 1024**3), nullable=False))


def downgrade() -> None:
    op.drop_index('ix_audit_event_subject', table_name='audit_event')
    op.drop_index('ix_audit_event_action', table_name='audit_event')
    with op.batch_alter_table('grant', schema=None) as batch_op:
        batch_op.drop_column('work_bytes')
        batch_op.drop_column('view_bytes_per_day')
    with op.batch_alter_table('work_volume', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_work_volume_project_id'))
        batch_op.drop_index(batch_op.f('ix_work_volume_person_id'))
    op.drop_table('work_volume')
    op.drop_table('egress_day')
    with op.batch_alter_table('notebook_session', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notebook_session_token_sha256'))
        batch_op.drop_index(batch_op.f('ix_notebook_session_container_ip'))
        batch_op.drop_index(batch_op.f('ix_notebook_session_project_id'))
        batch_op.drop_index(batch_op.f('ix_notebook_session_person_id'))
    op.drop_table('notebook_session')

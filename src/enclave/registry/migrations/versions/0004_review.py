"""export review

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

The output-review airlock: export requests, their files (by SHA-256; the bytes sit in the
quarantine), the findings of the automated checks, reviewers' decisions, comments and releases.
Files, findings, reviews and comments are append-only at the database level, like the audit log:
a resubmission adds a new version instead of rewriting what reviewers already saw.
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

# Spelled out rather than imported from enclave.registry.models: a migration must not change when
# the models do.
APPEND_ONLY_TABLES = ('export_file', 'export_finding', 'export_review', 'export_comment')


def upgrade() -> None:
    op.create_table('export_request',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('author_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=24), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('justification', sa.Text(), nullable=False),
    sa.Column('context', sa.Text(), nullable=False),
    sa.Column('total_bytes', sa.BigInteger(), nullable=False),
    sa.Column('verdict', sa.String(length=16), nullable=True),
    sa.Column('approvals_needed', sa.Integer(), nullable=True),
    sa.Column('policy_version', sa.String(length=64), nullable=True),
    sa.Column('policy_sha256', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['author_id'], ['person.id'], ),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('export_request', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_export_request_author_id'), ['author_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_export_request_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_export_request_state'), ['state'], unique=False)

    op.create_table('export_comment',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('author_id', sa.Integer(), nullable=False),
    sa.Column('visibility', sa.String(length=8), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['author_id'], ['person.id'], ),
    sa.ForeignKeyConstraint(['request_id'], ['export_request.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('export_comment', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_export_comment_request_id'), ['request_id'], unique=False)

    op.create_table('export_file',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['export_request.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('request_id', 'version', 'name', name='uq_export_file_name')
    )
    with op.batch_alter_table('export_file', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_export_file_request_id'), ['request_id'], unique=False)

    op.create_table('export_finding',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('check', sa.String(length=64), nullable=False),
    sa.Column('severity', sa.String(length=8), nullable=False),
    sa.Column('file', sa.Text(), nullable=False),
    sa.Column('location', sa.Text(), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('evidence', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['export_request.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('export_finding', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_export_finding_request_id'), ['request_id'], unique=False)

    op.create_table('export_release',
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
    sa.Column('key_id', sa.String(length=80), nullable=False),
    sa.Column('released_by', sa.String(length=64), nullable=False),
    sa.Column('released_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['export_request.id'], ),
    sa.PrimaryKeyConstraint('request_id')
    )
    op.create_table('export_review',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('reviewer_id', sa.Integer(), nullable=False),
    sa.Column('decision', sa.String(length=24), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('file_name', sa.String(length=255), nullable=True),
    sa.Column('file_sha256', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['export_request.id'], ),
    sa.ForeignKeyConstraint(['reviewer_id'], ['person.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('export_review', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_export_review_request_id'), ['request_id'], unique=False)

    for table in APPEND_ONLY_TABLES:
        _make_append_only(table)



def _make_append_only(table: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION {table}_is_append_only() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION '{table} is append-only';
            END;
            $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_is_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )


def _drop_append_only(table: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS {table}_is_append_only()")
    else:
        for verb in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{verb}")


def downgrade() -> None:
    for table in APPEND_ONLY_TABLES:
        _drop_append_only(table)
    with op.batch_alter_table('export_review', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_export_review_request_id'))

    op.drop_table('export_review')
    op.drop_table('export_release')
    with op.batch_alter_table('export_finding', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_export_finding_request_id'))

    op.drop_table('export_finding')
    with op.batch_alter_table('export_file', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_export_file_request_id'))

    op.drop_table('export_file')
    with op.batch_alter_table('export_comment', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_export_comment_request_id'))

    op.drop_table('export_comment')
    with op.batch_alter_table('export_request', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_export_request_state'))
        batch_op.drop_index(batch_op.f('ix_export_request_project_id'))
        batch_op.drop_index(batch_op.f('ix_export_request_author_id'))

    op.drop_table('export_request')

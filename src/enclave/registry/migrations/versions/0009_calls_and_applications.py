"""calls and applications

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30

Access by competitive application: calls (window, token pool, tiers, the rubric and terms copied
in with their SHA-256), applications with their submitted versions (append-only: a submission is
never edited), panel assignments with declared or flagged conflicts, panel scores, awards binding
tokens to one project, and progress or final reports (append-only).
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

APPEND_ONLY_TABLES = ('access_application_version', 'award_report')


def upgrade() -> None:
    op.create_table('access_call',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('slug', sa.String(length=64), nullable=False),
    sa.Column('title', sa.String(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('opens_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closes_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('pool_tokens', sa.BigInteger(), nullable=False),
    sa.Column('tiers', sa.String(), nullable=False),
    sa.Column('max_award', sa.BigInteger(), nullable=True),
    sa.Column('rubric', sa.Text(), nullable=False),
    sa.Column('rubric_version', sa.String(length=64), nullable=False),
    sa.Column('rubric_sha256', sa.String(length=64), nullable=False),
    sa.Column('terms', sa.Text(), nullable=False),
    sa.Column('terms_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('closed_by', sa.String(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('slug')
    )
    op.create_table('access_application',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('call_id', sa.Integer(), nullable=False),
    sa.Column('applicant_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('outcome', sa.String(length=24), nullable=True),
    sa.Column('outcome_reason', sa.String(), nullable=False),
    sa.Column('content', sa.Text(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('tier', sa.String(length=16), nullable=False),
    sa.Column('tokens_requested', sa.BigInteger(), nullable=False),
    sa.Column('conditions', sa.String(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decided_by', sa.String(), nullable=True),
    sa.ForeignKeyConstraint(['applicant_id'], ['person.id'], ),
    sa.ForeignKeyConstraint(['call_id'], ['access_call.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_access_application_applicant_id'), 'access_application', ['applicant_id'], unique=False)
    op.create_index(op.f('ix_access_application_call_id'), 'access_application', ['call_id'], unique=False)
    op.create_table('access_application_version',
    sa.Column('application_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('content', sa.Text(), nullable=False),
    sa.Column('content_sha256', sa.String(length=64), nullable=False),
    sa.Column('terms_sha256', sa.String(length=64), nullable=False),
    sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('submitted_by', sa.String(), nullable=False),
    sa.ForeignKeyConstraint(['application_id'], ['access_application.id'], ),
    sa.PrimaryKeyConstraint('application_id', 'version')
    )
    op.create_table('access_award',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('call_id', sa.Integer(), nullable=False),
    sa.Column('application_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('tier', sa.String(length=16), nullable=False),
    sa.Column('tokens_awarded', sa.BigInteger(), nullable=False),
    sa.Column('tranche_first', sa.BigInteger(), nullable=False),
    sa.Column('tranche_second', sa.BigInteger(), nullable=False),
    sa.Column('second_released_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('second_released_by', sa.String(), nullable=True),
    sa.Column('supplement_tokens', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('supplement_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(), nullable=False),
    sa.ForeignKeyConstraint(['application_id'], ['access_application.id'], ),
    sa.ForeignKeyConstraint(['call_id'], ['access_call.id'], ),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('application_id', name='uq_access_award_application'),
    sa.UniqueConstraint('project_id')
    )
    op.create_index(op.f('ix_access_award_call_id'), 'access_award', ['call_id'], unique=False)
    op.create_table('panel_assignment',
    sa.Column('application_id', sa.Integer(), nullable=False),
    sa.Column('person_id', sa.Integer(), nullable=False),
    sa.Column('assigned_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('assigned_by', sa.String(), nullable=False),
    sa.Column('conflict', sa.String(length=16), nullable=True),
    sa.Column('conflict_note', sa.String(), nullable=False),
    sa.Column('declared_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('comment_public', sa.Text(), server_default='', nullable=False),
    sa.Column('comment_private', sa.Text(), server_default='', nullable=False),
    sa.Column('scored_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['application_id'], ['access_application.id'], ),
    sa.ForeignKeyConstraint(['person_id'], ['person.id'], ),
    sa.PrimaryKeyConstraint('application_id', 'person_id')
    )
    op.create_table('panel_score',
    sa.Column('application_id', sa.Integer(), nullable=False),
    sa.Column('person_id', sa.Integer(), nullable=False),
    sa.Column('criterion', sa.String(length=64), nullable=False),
    sa.Column('score', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['application_id'], ['access_application.id'], ),
    sa.ForeignKeyConstraint(['person_id'], ['person.id'], ),
    sa.PrimaryKeyConstraint('application_id', 'person_id', 'criterion')
    )
    op.create_table('award_report',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('award_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('filed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('filed_by', sa.String(), nullable=False),
    sa.ForeignKeyConstraint(['award_id'], ['access_award.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_award_report_award_id'), 'award_report', ['award_id'], unique=False)

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
    op.drop_index(op.f('ix_award_report_award_id'), table_name='award_report')
    op.drop_table('award_report')
    op.drop_table('panel_score')
    op.drop_table('panel_assignment')
    op.drop_index(op.f('ix_access_award_call_id'), table_name='access_award')
    op.drop_table('access_award')
    op.drop_table('access_application_version')
    op.drop_index(op.f('ix_access_application_call_id'), table_name='access_application')
    op.drop_index(op.f('ix_access_application_applicant_id'), table_name='access_application')
    op.drop_table('access_application')
    op.drop_table('access_call')

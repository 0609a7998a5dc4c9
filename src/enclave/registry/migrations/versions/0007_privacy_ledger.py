"""privacy ledger

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30

The differential-privacy ledger: each project's running totals (`privacy_account`, the row a charge
locks) and every answered DP query (`privacy_spend`: mechanism, query, dataset, epsilon, delta,
who asked, the released value, its audit event). Spends are append-only, like the audit chain.
The budget is the grant's `epsilon` and `delta`, which existed since 0001.
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

APPEND_ONLY_TABLES = ('privacy_spend',)


def upgrade() -> None:
    op.create_table('privacy_account',
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('epsilon_spent', sa.Float(), nullable=False),
    sa.Column('delta_spent', sa.Float(), nullable=False),
    sa.Column('spends', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('project_id')
    )
    op.create_table('privacy_spend',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('person_id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=True),
    sa.Column('dataset', sa.String(length=128), nullable=False),
    sa.Column('mechanism', sa.String(length=64), nullable=False),
    sa.Column('query', sa.Text(), nullable=False),
    sa.Column('epsilon', sa.Float(), nullable=False),
    sa.Column('delta', sa.Float(), nullable=False),
    sa.Column('result', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('audit_seq', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['dataset.id'], ),
    sa.ForeignKeyConstraint(['person_id'], ['person.id'], ),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('privacy_spend', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_privacy_spend_person_id'), ['person_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_privacy_spend_project_id'), ['project_id'], unique=False)

    # After the indexes: SQLite's batch mode may copy a table, and a copy would lose its triggers.
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
    with op.batch_alter_table('privacy_spend', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_privacy_spend_project_id'))
        batch_op.drop_index(batch_op.f('ix_privacy_spend_person_id'))
    op.drop_table('privacy_spend')
    op.drop_table('privacy_account')

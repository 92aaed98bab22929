"""model version and abstain threshold

Revision ID: 3677907d0e3a
Revises: c4b11f5c1853
Create Date: 2026-11-26 11:09:36.850920
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '3677907d0e3a'
down_revision = 'c4b11f5c1853'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.add_column(sa.Column('version', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('abstain_threshold', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True))
    # Models registered before versions existed get 1, 2, ... per name in order of creation.
    op.execute("""
        UPDATE models SET version = (
            SELECT COUNT(*) FROM models AS older
            WHERE older.name = models.name
              AND (older.created_at < models.created_at
                   OR (older.created_at = models.created_at AND older.id <= models.id)))
    """)
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.alter_column('version', existing_type=sa.Integer(), nullable=False)
        batch_op.create_unique_constraint('uq_models_name_version', ['name', 'version'])


def downgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_constraint('uq_models_name_version', type_='unique')
        batch_op.drop_column('abstain_threshold')
        batch_op.drop_column('version')

"""dataset scripts: the share of letters per writing system, reported on upload

Revision ID: 2bceda4beb33
Revises: 25ce3fd08b5a
Create Date: 2026-12-06 17:56:09.737343
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '2bceda4beb33'
down_revision = '25ce3fd08b5a'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: datasets uploaded before have none (the API works it out from their records when it needs it).
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scripts', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()),
                                                                        'postgresql'), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_column('scripts')

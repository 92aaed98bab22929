"""idempotency keys

Revision ID: dacd5f8bdfa7
Revises: 2f67f205d2fc
Create Date: 2026-11-26 09:35:48.280659
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
import core.db.base

revision = 'dacd5f8bdfa7'
down_revision = '2f67f205d2fc'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('idempotency_keys',
    sa.Column('endpoint', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('response', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('location', sa.String(length=255), nullable=True),
    sa.Column('created_at', core.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('endpoint', 'key', name=op.f('pk_idempotency_keys'))
    )


def downgrade() -> None:
    op.drop_table('idempotency_keys')

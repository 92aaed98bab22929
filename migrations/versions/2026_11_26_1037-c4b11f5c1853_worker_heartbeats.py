"""worker heartbeats

Revision ID: c4b11f5c1853
Revises: dacd5f8bdfa7
Create Date: 2026-11-26 10:37:44.400183
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import core.db.base

revision = 'c4b11f5c1853'
down_revision = 'dacd5f8bdfa7'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('worker_heartbeats',
    sa.Column('worker_id', sa.String(length=255), nullable=False),
    sa.Column('seen_at', core.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('worker_id', name=op.f('pk_worker_heartbeats'))
    )
    with op.batch_alter_table('worker_heartbeats', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_worker_heartbeats_seen_at'), ['seen_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('worker_heartbeats', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_worker_heartbeats_seen_at'))

    op.drop_table('worker_heartbeats')

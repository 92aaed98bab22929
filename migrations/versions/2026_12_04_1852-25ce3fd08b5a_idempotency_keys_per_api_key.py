"""idempotency keys per api key

Revision ID: 25ce3fd08b5a
Revises: 2574967a5b2a
Create Date: 2026-12-04 18:52:53.180792
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '25ce3fd08b5a'
down_revision = '2574967a5b2a'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Stored replies so far were shared by every caller: they become the auth-off caller's ("").
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner', sa.String(length=36), nullable=False, server_default=''))
        batch_op.drop_constraint('pk_idempotency_keys', type_='primary')
        batch_op.create_primary_key('pk_idempotency_keys', ['endpoint', 'owner', 'key'])
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.alter_column('owner', server_default=None)


def downgrade() -> None:
    # Without the owner, keys of different callers would collide: keep only the auth-off caller's.
    op.execute("DELETE FROM idempotency_keys WHERE owner <> ''")
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.drop_constraint('pk_idempotency_keys', type_='primary')
        batch_op.drop_column('owner')
        batch_op.create_primary_key('pk_idempotency_keys', ['endpoint', 'key'])

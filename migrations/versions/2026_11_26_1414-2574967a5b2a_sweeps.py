"""sweeps

Revision ID: 2574967a5b2a
Revises: 65f8d3a41a84
Create Date: 2026-11-26 14:14:58.153218
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
import core.db.base

revision = '2574967a5b2a'
down_revision = '65f8d3a41a84'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sweeps',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('dataset_id', sa.Uuid(), nullable=True),
    sa.Column('request', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('metric', sa.String(length=32), nullable=False),
    sa.Column('max_parallel', sa.Integer(), nullable=False),
    sa.Column('children', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', core.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('cancelled_at', core.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('dispatched_at', core.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_sweeps_dataset_id_datasets'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sweeps'))
    )
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sweeps_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_sweeps_dataset_id'), ['dataset_id'], unique=False)

    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('spec_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('sweep_id', sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column('sweep_index', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('sent_at', core.db.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_training_jobs_spec_hash'), ['spec_hash'], unique=False)
        batch_op.create_index(batch_op.f('ix_training_jobs_sweep_id'), ['sweep_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_training_jobs_sweep_id_sweeps'), 'sweeps', ['sweep_id'], ['id'], ondelete='SET NULL')



def downgrade() -> None:
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_training_jobs_sweep_id_sweeps'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_training_jobs_sweep_id'))
        batch_op.drop_index(batch_op.f('ix_training_jobs_spec_hash'))
        batch_op.drop_column('sent_at')
        batch_op.drop_column('sweep_index')
        batch_op.drop_column('sweep_id')
        batch_op.drop_column('spec_hash')

    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sweeps_dataset_id'))
        batch_op.drop_index(batch_op.f('ix_sweeps_created_at'))

    op.drop_table('sweeps')

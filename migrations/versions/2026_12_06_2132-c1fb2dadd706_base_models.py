"""base models: installed pretrained encoders (Hugging Face folders) that encoder jobs fine-tune

Revision ID: c1fb2dadd706
Revises: 2bceda4beb33
Create Date: 2026-12-06 21:32:30.379691
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import core.db.base

revision = 'c1fb2dadd706'
down_revision = '2bceda4beb33'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('base_models',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('architecture', sa.String(length=32), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('num_parameters', sa.BigInteger(), nullable=False),
    sa.Column('hidden_size', sa.Integer(), nullable=False),
    sa.Column('num_layers', sa.Integer(), nullable=False),
    sa.Column('vocab_size', sa.Integer(), nullable=False),
    sa.Column('max_length', sa.Integer(), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('created_at', core.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_base_models')),
    sa.UniqueConstraint('name', name=op.f('uq_base_models_name'))
    )


def downgrade() -> None:
    op.drop_table('base_models')

"""model evaluation and job test dataset

Revision ID: 2f67f205d2fc
Revises: 8da64f3b6b43
Create Date: 2026-11-26 09:08:55.850144
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
import core.db.base

revision = '2f67f205d2fc'
down_revision = '8da64f3b6b43'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.add_column(sa.Column('evaluation', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True))

    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('test_dataset_id', sa.Uuid(), nullable=True))
        batch_op.create_index(batch_op.f('ix_training_jobs_test_dataset_id'), ['test_dataset_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_training_jobs_test_dataset_id_datasets'), 'datasets', ['test_dataset_id'], ['id'], ondelete='SET NULL')



def downgrade() -> None:
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_training_jobs_test_dataset_id_datasets'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_training_jobs_test_dataset_id'))
        batch_op.drop_column('test_dataset_id')

    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_column('evaluation')


"""Record when a trial was first shown and how often its videos were played before the answer.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.add_column(sa.Column("first_shown_at", sa.DateTime, nullable=True))
    with op.batch_alter_table("ratings") as batch:
        batch.add_column(sa.Column("plays", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ratings") as batch:
        batch.drop_column("plays")
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("first_shown_at")

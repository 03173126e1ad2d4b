"""Record how a rater enrolled (open link or invitation) and how long the server showed a trial
before its answer arrived.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("raters") as batch:
        batch.add_column(sa.Column("enrolled_via", sa.String(10), nullable=True))
    with op.batch_alter_table("ratings") as batch:
        batch.add_column(sa.Column("viewed_ms", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ratings") as batch:
        batch.drop_column("viewed_ms")
    with op.batch_alter_table("raters") as batch:
        batch.drop_column("enrolled_via")

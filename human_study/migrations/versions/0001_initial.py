"""The first schema: studies, raters, trials, ratings.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("design_hash", sa.String(32), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "raters",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id"), nullable=False),
        sa.Column("token", sa.String(64), nullable=False, unique=True),
        sa.Column("label", sa.String(100), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.Column("user_agent", sa.String(300), nullable=True),
    )
    op.create_index("ix_raters_study_id", "raters", ["study_id"])
    op.create_table(
        "trials",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("rater_id", sa.Integer, sa.ForeignKey("raters.id"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("question_id", sa.String(64), nullable=False),
        sa.Column("axis", sa.String(20), nullable=False),
        sa.Column("clip_id", sa.String(64), nullable=False),
        sa.Column("method_left", sa.String(64), nullable=False),
        sa.Column("method_right", sa.String(64), nullable=True),
        sa.Column("media_left", sa.Text, nullable=False),
        sa.Column("media_right", sa.Text, nullable=True),
        sa.Column("is_practice", sa.Boolean, nullable=False),
        sa.Column("is_attention", sa.Boolean, nullable=False),
        sa.Column("expected", sa.String(10), nullable=True),
        sa.UniqueConstraint("rater_id", "position", name="uq_trials_rater_position"),
    )
    op.create_index("ix_trials_rater_id", "trials", ["rater_id"])
    op.create_table(
        "ratings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("trial_id", sa.Integer, sa.ForeignKey("trials.id"), nullable=False, unique=True),
        sa.Column("rater_id", sa.Integer, sa.ForeignKey("raters.id"), nullable=False),
        sa.Column("submit_id", sa.String(64), nullable=False),
        sa.Column("choice", sa.String(10), nullable=False),
        sa.Column("chosen_method", sa.String(64), nullable=True),
        sa.Column("score", sa.Integer, nullable=True),
        sa.Column("response_ms", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("app_version", sa.String(40), nullable=False),
    )
    op.create_index("ix_ratings_rater_id", "ratings", ["rater_id"])


def downgrade() -> None:
    op.drop_table("ratings")
    op.drop_table("trials")
    op.drop_table("raters")
    op.drop_table("studies")

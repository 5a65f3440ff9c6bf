"""add the schedules table, and the schedule that made each invocation

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("function", sa.String(128), nullable=False),
        sa.Column("input", sa.JSON(), nullable=False),
        sa.Column("cron", sa.String(255), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("every", sa.Integer(), nullable=True),
        sa.Column("catch_up", sa.String(8), nullable=False),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("declared", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("invocations") as batch:
        batch.add_column(sa.Column("schedule", sa.String(64), nullable=True))
        batch.create_index("ix_invocations_schedule_created", ["schedule", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("invocations") as batch:
        batch.drop_index("ix_invocations_schedule_created")
        batch.drop_column("schedule")
    op.drop_table("schedules")

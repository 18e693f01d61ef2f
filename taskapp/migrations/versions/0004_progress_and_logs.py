"""progress on jobs and job_events; job_logs, what handlers log per attempt

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("progress_percent", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("progress_message", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("job_events") as batch:
        batch.add_column(sa.Column("progress", sa.Integer(), nullable=True))
    op.create_table(
        "job_logs",
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("job_id", sa.String(128), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
    )
    op.create_index("ix_job_logs_job_id", "job_logs", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_job_logs_job_id", "job_logs")
    op.drop_table("job_logs")
    with op.batch_alter_table("job_events") as batch:
        batch.drop_column("progress")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("progress_message")
        batch.drop_column("progress_percent")

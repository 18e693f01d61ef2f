"""flow control: concurrency keys and limits, the lines of waiting jobs, limits, rates and pauses of job
types and queues, and the job
types each worker has loaded

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

WAITING = sa.text("waiting_for <> ''")
JSON_TYPE = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("concurrency_key", sa.String(255), nullable=False, server_default=""))
        batch.add_column(sa.Column("concurrency_limit", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("waiting_for", sa.String(16), nullable=False, server_default=""))
        batch.add_column(sa.Column("fair_rank", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("flow_limited", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index(
        "ix_jobs_waiting",
        "jobs",
        ["type", "waiting_for", "fair_rank", "seq"],
        postgresql_where=WAITING,
        sqlite_where=WAITING,
    )
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("types", JSON_TYPE, nullable=False, server_default=sa.text("'[]'")))
    op.create_table(
        "flow_controls",
        sa.Column("scope", sa.String(260), primary_key=True),
        sa.Column("max_running", sa.Integer(), nullable=True),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("rate", sa.Integer(), nullable=True),
        sa.Column("rate_seconds", sa.Float(), nullable=False),
        sa.Column("next_start_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_start_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("flow_controls")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("types")
    op.drop_index("ix_jobs_waiting", "jobs")
    with op.batch_alter_table("jobs") as batch:
        for column in ("flow_limited", "fair_rank", "waiting_for", "concurrency_limit", "concurrency_key"):
            batch.drop_column(column)

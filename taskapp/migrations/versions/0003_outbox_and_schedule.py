"""jobs.published_at (the outbox) and the indexes the scheduler's queries use

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UNPUBLISHED = sa.text("published_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
    # Jobs from before the outbox were published when they were written.
    op.execute("UPDATE jobs SET published_at = updated_at")
    op.create_index("ix_jobs_state_scheduled_at", "jobs", ["state", "scheduled_at"])
    op.create_index(
        "ix_jobs_unpublished", "jobs", ["updated_at"], postgresql_where=UNPUBLISHED, sqlite_where=UNPUBLISHED
    )
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_finished_at", "jobs")
    op.drop_index("ix_jobs_unpublished", "jobs")
    op.drop_index("ix_jobs_state_scheduled_at", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("published_at")

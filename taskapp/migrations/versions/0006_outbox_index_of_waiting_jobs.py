"""ix_jobs_unpublished holds only jobs that want a run (QUEUED, RETRYING) and owe their message

A job claimed or cancelled before its message was marked sent kept `published_at` NULL, so the outbox index
grew with nearly every job at a low rate (its claim comes before the gateway's mark), and the mark's UPDATE
and the scheduler's `owed` scan read all of it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

OWING = sa.text("published_at IS NULL AND state IN ('QUEUED', 'RETRYING')")
UNPUBLISHED = sa.text("published_at IS NULL")


def upgrade() -> None:
    op.drop_index("ix_jobs_unpublished", "jobs")
    op.create_index("ix_jobs_unpublished", "jobs", ["updated_at"], postgresql_where=OWING, sqlite_where=OWING)


def downgrade() -> None:
    op.drop_index("ix_jobs_unpublished", "jobs")
    op.create_index(
        "ix_jobs_unpublished", "jobs", ["updated_at"], postgresql_where=UNPUBLISHED, sqlite_where=UNPUBLISHED
    )

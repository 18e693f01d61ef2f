"""unique_keys: the job holding each unique key, and until when

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "unique_keys",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("job_id", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_unique_keys_job_id", "unique_keys", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_unique_keys_job_id", "unique_keys")
    op.drop_table("unique_keys")

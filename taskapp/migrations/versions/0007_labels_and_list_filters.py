"""labels on jobs, and the indexes of ListJobs' new filters: labels, created-at range, job id prefix

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

LABELS_TYPE = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("labels", LABELS_TYPE, nullable=False, server_default=sa.text("'{}'")))
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(
            "ix_jobs_labels",
            "jobs",
            ["labels"],
            postgresql_using="gin",
            postgresql_ops={"labels": "jsonb_path_ops"},
        )
        op.create_index(
            "ix_jobs_job_id_prefix", "jobs", ["job_id"], postgresql_ops={"job_id": "text_pattern_ops"}
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_jobs_job_id_prefix", "jobs")
        op.drop_index("ix_jobs_labels", "jobs")
    op.drop_index("ix_jobs_created_at", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("labels")

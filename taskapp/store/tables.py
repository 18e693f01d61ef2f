"""The SQLModel tables (Alembic's migrations build the same schema: tests/integration/test_migrations.py).

A row of `jobs` has a column for each field of `Job`, under the same name; `taskapp.store.rows` maps between
the two.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field, SQLModel

#: SQLite only auto-increments `INTEGER PRIMARY KEY`; PostgreSQL gets a BIGINT identity.
_SEQ_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: JSONB on PostgreSQL, JSON text on SQLite; Python None is stored as SQL NULL.
_JSON_TYPE = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
_TIMESTAMP = sa.DateTime(timezone=True)
#: The outbox: jobs that want a run and whose message is not known to be sent. A job claimed or cancelled before
#: its message was marked sent owes nothing; were it kept here, the index would grow with every such job.
_UNPUBLISHED = sa.text("published_at IS NULL AND state IN ('QUEUED', 'RETRYING')")
#: Jobs in a line of `taskapp.flow`, or just let out of it: only jobs of limited types and keys.
_WAITING = sa.text("waiting_for <> ''")


class JobRow(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        sa.Index("ix_jobs_state_seq", "state", "seq"),
        sa.Index("ix_jobs_type_seq", "type", "seq"),
        sa.Index("ix_jobs_priority_seq", "priority", "seq"),
        # The scheduler's queries: due SCHEDULED jobs, the outbox, and finished jobs past retention.
        sa.Index("ix_jobs_state_scheduled_at", "state", "scheduled_at"),
        sa.Index(
            "ix_jobs_unpublished", "updated_at", postgresql_where=_UNPUBLISHED, sqlite_where=_UNPUBLISHED
        ),
        sa.Index("ix_jobs_finished_at", "finished_at"),
        # Flow control's lines: the next to let out, per type, by priority then turn (`taskapp.flow`).
        sa.Index(
            "ix_jobs_waiting",
            "type",
            "waiting_for",
            "fair_rank",
            "seq",
            postgresql_where=_WAITING,
            sqlite_where=_WAITING,
        ),
        # ListJobs' filters: created-at ranges; on PostgreSQL also labels (`@>`) and job id prefixes (LIKE).
        sa.Index("ix_jobs_created_at", "created_at"),
        sa.Index(
            "ix_jobs_labels", "labels", postgresql_using="gin", postgresql_ops={"labels": "jsonb_path_ops"}
        ).ddl_if(dialect="postgresql"),
        sa.Index("ix_jobs_job_id_prefix", "job_id", postgresql_ops={"job_id": "text_pattern_ops"}).ddl_if(
            dialect="postgresql"
        ),
    )

    seq: int | None = Field(default=None, sa_type=_SEQ_TYPE, primary_key=True)
    job_id: str = Field(sa_type=sa.String(128), unique=True)
    type: str = Field(sa_type=sa.String(64))
    priority: str = Field(sa_type=sa.String(16))
    state: str = Field(sa_type=sa.String(16))
    payload: dict[str, Any] = Field(sa_type=_JSON_TYPE)
    result: Any = Field(default=None, sa_type=_JSON_TYPE, nullable=True)
    attempts: int = 0
    max_attempts: int
    last_error: str = Field(default="", sa_type=sa.Text)
    timeout_seconds: int
    fingerprint: str = Field(sa_type=sa.String(64))
    created_at: datetime = Field(sa_type=_TIMESTAMP)
    updated_at: datetime = Field(sa_type=_TIMESTAMP)
    scheduled_at: datetime = Field(sa_type=_TIMESTAMP)
    started_at: datetime | None = Field(default=None, sa_type=_TIMESTAMP, nullable=True)
    finished_at: datetime | None = Field(default=None, sa_type=_TIMESTAMP, nullable=True)
    worker: str = Field(default="", sa_type=sa.String(255))
    #: Until when the current run may be live: its hard time limit plus a margin. A RUNNING job past its
    #: lease lost its worker, and the next delivery of its message may claim it again.
    lease_expires_at: datetime | None = Field(default=None, sa_type=_TIMESTAMP, nullable=True)
    #: When the message the job's state calls for reached the broker. NULL in QUEUED or RETRYING means one is
    #: owed: the gateway or worker died between the commit and the publish, and the scheduler sends it.
    published_at: datetime | None = Field(default=None, sa_type=_TIMESTAMP, nullable=True)
    #: The handler's last progress report in the current attempt.
    progress_percent: int | None = Field(default=None, nullable=True)
    progress_message: str = Field(default="", sa_type=sa.Text, sa_column_kwargs={"server_default": ""})
    #: Runs ever claimed; numbers each run's Celery task id (`taskapp.routing.task_id_for`).
    runs: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    #: The Celery task id that claimed the current or last run: what its worker renews the lease by, and what
    #: a cancel revokes.
    task_id: str = Field(default="", sa_type=sa.String(160), sa_column_kwargs={"server_default": ""})
    #: The caller's key -> value tags (ListJobs filters on them).
    labels: dict[str, str] = Field(
        default_factory=dict, sa_type=_JSON_TYPE, sa_column_kwargs={"server_default": sa.text("'{}'")}
    )
    #: Flow control (`taskapp.flow`): at most `concurrency_limit` jobs of the key running at once; why the job
    #: waits for a slot, and its turn among its type's waiting jobs; whether its run was claimed under a limit.
    concurrency_key: str = Field(default="", sa_type=sa.String(255), sa_column_kwargs={"server_default": ""})
    concurrency_limit: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    waiting_for: str = Field(default="", sa_type=sa.String(16), sa_column_kwargs={"server_default": ""})
    fair_rank: int = Field(default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": "0"})
    flow_limited: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})


class JobEventRow(SQLModel, table=True):
    """One row per state change: the audit trail, and what WatchJob replays."""

    __tablename__ = "job_events"

    seq: int | None = Field(default=None, sa_type=_SEQ_TYPE, primary_key=True)
    job_id: str = Field(sa_type=sa.String(128), index=True)
    at: datetime = Field(sa_type=_TIMESTAMP)
    state: str = Field(sa_type=sa.String(16))
    attempt: int
    message: str = Field(default="", sa_type=sa.Text)
    #: Set on progress reports (state RUNNING).
    progress: int | None = Field(default=None, nullable=True)


class JobLogRow(SQLModel, table=True):
    """A line a handler logged through its `JobContext.logger` (capped per job: `taskapp.joblogs`)."""

    __tablename__ = "job_logs"

    seq: int | None = Field(default=None, sa_type=_SEQ_TYPE, primary_key=True)
    job_id: str = Field(sa_type=sa.String(128), index=True)
    attempt: int
    at: datetime = Field(sa_type=_TIMESTAMP)
    level: str = Field(sa_type=sa.String(16))
    message: str = Field(sa_type=sa.Text)


class WorkerRow(SQLModel, table=True):
    """A worker's latest beat (`taskapp.worker_beats`): who it is and when it was last heard from."""

    __tablename__ = "workers"

    name: str = Field(sa_type=sa.String(255), primary_key=True)
    hostname: str = Field(sa_type=sa.String(255))
    pid: int
    concurrency: int
    started_at: datetime = Field(sa_type=_TIMESTAMP)
    seen_at: datetime = Field(sa_type=_TIMESTAMP, index=True)
    #: The job types it has loaded, a JSON list.
    types: list[str] = Field(
        default_factory=list, sa_type=_JSON_TYPE, sa_column_kwargs={"server_default": sa.text("'[]'")}
    )


class UniqueKeyRow(SQLModel, table=True):
    """Which job holds a unique key, and until when (NULL: until that job has finished). The key is the primary
    key, so two submits with one key cannot both take it, whatever their timing."""

    __tablename__ = "unique_keys"

    key: str = Field(sa_type=sa.String(255), primary_key=True)
    job_id: str = Field(sa_type=sa.String(128), index=True)
    expires_at: datetime | None = Field(default=None, sa_type=_TIMESTAMP, nullable=True)


class ScheduleRow(SQLModel, table=True):
    """A recurring schedule (`taskapp.schedules`): its definition, its next firing, and what its firings did."""

    __tablename__ = "schedules"

    name: str = Field(sa_type=sa.String(64), primary_key=True)
    cron: str = Field(sa_type=sa.String(255))
    time_zone: str = Field(sa_type=sa.String(64))
    interval_seconds: int | None = Field(default=None, nullable=True)
    #: The template of each firing's job: type, payload, priority, max_attempts, timeout_seconds, labels.
    job: dict[str, Any] = Field(sa_type=_JSON_TYPE)
    overlap: str = Field(sa_type=sa.String(8))
    catch_up: str = Field(sa_type=sa.String(8))
    paused: bool
    next_fire_at: datetime = Field(sa_type=_TIMESTAMP, index=True)
    last_fire_at: datetime | None = Field(default=None, sa_type=_TIMESTAMP, nullable=True)
    last_job_id: str = Field(sa_type=sa.String(128))
    fired: int
    skipped: int
    missed: int
    created_at: datetime = Field(sa_type=_TIMESTAMP)
    updated_at: datetime = Field(sa_type=_TIMESTAMP)


class FlowControlRow(SQLModel, table=True):
    """An operator's control over a job type or a priority queue (`taskapp.flow`); none: no row."""

    __tablename__ = "flow_controls"

    #: "type:<job type>", "queue:<priority>" or "key:<concurrency key>".
    scope: str = Field(sa_type=sa.String(260), primary_key=True)
    max_running: int | None = Field(default=None, nullable=True)
    paused: bool = False
    rate: int | None = Field(default=None, nullable=True)
    rate_seconds: float = 1.0
    next_start_at: datetime | None = Field(default=None, sa_type=_TIMESTAMP, nullable=True)
    last_start_at: datetime | None = Field(default=None, sa_type=_TIMESTAMP, nullable=True)


jobs_table: sa.Table = JobRow.__table__  # type: ignore[attr-defined]
events_table: sa.Table = JobEventRow.__table__  # type: ignore[attr-defined]
logs_table: sa.Table = JobLogRow.__table__  # type: ignore[attr-defined]
workers_table: sa.Table = WorkerRow.__table__  # type: ignore[attr-defined]
unique_keys_table: sa.Table = UniqueKeyRow.__table__  # type: ignore[attr-defined]
schedules_table: sa.Table = ScheduleRow.__table__  # type: ignore[attr-defined]
flow_controls_table: sa.Table = FlowControlRow.__table__  # type: ignore[attr-defined]

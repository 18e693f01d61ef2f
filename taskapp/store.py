"""Job state in SQL: the SQLModel tables and the store that moves jobs between states.

Every state change is one guarded UPDATE (`... WHERE state IN (allowed predecessors)`) plus a `job_events` row,
in one transaction, so a late or duplicate event never moves a job backwards and a job is claimed by one run
at a time. The same code serves SQLite (embedded default) and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Field, SQLModel

from taskapp.errors import StoreUnavailable
from taskapp.jobs import (
    CANCELLABLE_STATES,
    CLAIMABLE_STATES,
    CancelOutcome,
    Job,
    JobFilter,
    JobState,
    NewJob,
    Priority,
)

#: SQLite only auto-increments `INTEGER PRIMARY KEY`; PostgreSQL gets a BIGINT identity.
_SEQ_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: JSONB on PostgreSQL, JSON text on SQLite; Python None is stored as SQL NULL.
_JSON_TYPE = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
_TIMESTAMP = sa.DateTime(timezone=True)


class JobRow(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        sa.Index("ix_jobs_state_seq", "state", "seq"),
        sa.Index("ix_jobs_type_seq", "type", "seq"),
        sa.Index("ix_jobs_priority_seq", "priority", "seq"),
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


class JobEventRow(SQLModel, table=True):
    """One row per state change: the audit trail, and what WatchJob replays."""

    __tablename__ = "job_events"

    seq: int | None = Field(default=None, sa_type=_SEQ_TYPE, primary_key=True)
    job_id: str = Field(sa_type=sa.String(128), index=True)
    at: datetime = Field(sa_type=_TIMESTAMP)
    state: str = Field(sa_type=sa.String(16))
    attempt: int
    message: str = Field(default="", sa_type=sa.Text)


jobs_table: sa.Table = JobRow.__table__  # type: ignore[attr-defined]
events_table: sa.Table = JobEventRow.__table__  # type: ignore[attr-defined]


class JobStore(Protocol):
    """The port the service and the worker use; `SqlJobStore` here, `InMemoryJobStore` in `taskapp.testing`."""

    def create(self, new: NewJob, now: datetime) -> tuple[Job, bool]:
        """Insert the job as QUEUED, or return the job that already has its id; the bool says if it was created."""
        ...

    def discard(self, job_id: str) -> None:
        """Delete a job that was created but could not be published (it never ran)."""
        ...

    def get(self, job_id: str) -> Job | None: ...

    def list(self, filter: JobFilter, limit: int, before_seq: int | None) -> list[Job]:
        """Jobs matching `filter`, newest first, with `seq` below `before_seq`."""
        ...

    def cancel(self, job_id: str, now: datetime) -> CancelOutcome | None:
        """Move a cancellable job to CANCELLED; None when there is no such job."""
        ...

    def claim(self, job_id: str, worker: str, now: datetime) -> Job | None:
        """QUEUED/RETRYING -> RUNNING for one run, counting an attempt; None when the job is not claimable."""
        ...

    def finish(
        self,
        job_id: str,
        attempt: int | None,
        state: JobState,
        now: datetime,
        *,
        result: Any = None,
        error: str = "",
    ) -> bool:
        """RUNNING (on `attempt`, if known) -> a terminal state; False when the job had already moved on."""
        ...


def utcnow() -> datetime:
    return datetime.now(UTC)


def normalize_database_url(url: str) -> str:
    """Use psycopg 3 for plain `postgresql://` URLs (SQLAlchemy would pick psycopg2, which we do not ship)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def create_db_engine(url: str) -> Engine:
    """An engine tuned per backend: SQLite gets WAL, a busy timeout and write-locking transactions."""
    url = normalize_database_url(url)
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)

    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own is deferred and can deadlock).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Take the write lock up front: concurrent writers then queue on busy_timeout instead of failing.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time taskapp stores is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _to_job(row: sa.Row[Any]) -> Job:
    m = row._mapping
    created_at = _aware(m["created_at"])
    updated_at = _aware(m["updated_at"])
    scheduled_at = _aware(m["scheduled_at"])
    assert created_at is not None and updated_at is not None and scheduled_at is not None
    return Job(
        job_id=m["job_id"],
        type=m["type"],
        priority=Priority(m["priority"]),
        state=JobState(m["state"]),
        payload=m["payload"],
        result=m["result"],
        attempts=m["attempts"],
        max_attempts=m["max_attempts"],
        last_error=m["last_error"],
        timeout_seconds=m["timeout_seconds"],
        created_at=created_at,
        updated_at=updated_at,
        scheduled_at=scheduled_at,
        started_at=_aware(m["started_at"]),
        finished_at=_aware(m["finished_at"]),
        worker=m["worker"],
        seq=m["seq"],
        fingerprint=m["fingerprint"],
    )


def _states(states: frozenset[JobState] | Sequence[JobState]) -> list[str]:
    return [s.value for s in states]


class SqlJobStore:
    """`JobStore` on SQLAlchemy Core over the SQLModel tables."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        dialect = engine.dialect.name
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert

    @classmethod
    def from_url(cls, url: str) -> SqlJobStore:
        return cls(create_db_engine(url))

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One transaction; a lost or refused connection becomes `StoreUnavailable`."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise StoreUnavailable(f"job database unavailable: {exc.orig or exc}") from exc

    def _event(
        self, conn: Connection, job_id: str, state: JobState, attempt: int, at: datetime, message: str = ""
    ) -> None:
        conn.execute(
            events_table.insert().values(
                job_id=job_id, state=state.value, attempt=attempt, at=at, message=message
            )
        )

    def create(self, new: NewJob, now: datetime) -> tuple[Job, bool]:
        insert = (
            self._insert(jobs_table)
            .values(
                job_id=new.job_id,
                type=new.type,
                priority=new.priority.value,
                state=JobState.QUEUED.value,
                payload=new.payload,
                attempts=0,
                max_attempts=new.max_attempts,
                last_error="",
                timeout_seconds=new.timeout_seconds,
                fingerprint=new.fingerprint,
                created_at=now,
                updated_at=now,
                scheduled_at=now,
                worker="",
            )
            .on_conflict_do_nothing(index_elements=["job_id"])
            .returning(*jobs_table.c)
        )
        with self._transaction() as conn:
            row = conn.execute(insert).first()
            if row is not None:
                self._event(conn, new.job_id, JobState.QUEUED, 0, now)
                return _to_job(row), True
            existing = conn.execute(sa.select(jobs_table).where(jobs_table.c.job_id == new.job_id)).one()
            return _to_job(existing), False

    def discard(self, job_id: str) -> None:
        with self._transaction() as conn:
            deleted = conn.execute(
                jobs_table.delete().where(
                    jobs_table.c.job_id == job_id,
                    jobs_table.c.state == JobState.QUEUED.value,
                    jobs_table.c.attempts == 0,
                )
            )
            if deleted.rowcount:
                conn.execute(events_table.delete().where(events_table.c.job_id == job_id))

    def get(self, job_id: str) -> Job | None:
        with self._transaction() as conn:
            row = conn.execute(sa.select(jobs_table).where(jobs_table.c.job_id == job_id)).first()
        return None if row is None else _to_job(row)

    def list(self, filter: JobFilter, limit: int, before_seq: int | None) -> list[Job]:
        query = sa.select(jobs_table).order_by(jobs_table.c.seq.desc()).limit(limit)
        if filter.state is not None:
            query = query.where(jobs_table.c.state == filter.state.value)
        if filter.priority is not None:
            query = query.where(jobs_table.c.priority == filter.priority.value)
        if filter.type is not None:
            query = query.where(jobs_table.c.type == filter.type)
        if before_seq is not None:
            query = query.where(jobs_table.c.seq < before_seq)
        with self._transaction() as conn:
            return [_to_job(row) for row in conn.execute(query)]

    def cancel(self, job_id: str, now: datetime) -> CancelOutcome | None:
        with self._transaction() as conn:
            while True:
                row = conn.execute(
                    sa.select(jobs_table.c.state, jobs_table.c.attempts).where(jobs_table.c.job_id == job_id)
                ).first()
                if row is None:
                    return None
                seen = JobState(row.state)
                if seen not in CANCELLABLE_STATES:
                    return CancelOutcome(cancelled=False, previous_state=seen, state=seen)
                # Guard on the exact state read: if a worker moved the job meanwhile, read it again.
                updated = conn.execute(
                    jobs_table.update()
                    .where(jobs_table.c.job_id == job_id, jobs_table.c.state == seen.value)
                    .values(state=JobState.CANCELLED.value, updated_at=now, finished_at=now)
                )
                if updated.rowcount == 1:
                    self._event(conn, job_id, JobState.CANCELLED, row.attempts, now, "cancelled")
                    return CancelOutcome(cancelled=True, previous_state=seen, state=JobState.CANCELLED)

    def claim(self, job_id: str, worker: str, now: datetime) -> Job | None:
        claim = (
            jobs_table.update()
            .where(
                jobs_table.c.job_id == job_id,
                jobs_table.c.state.in_(_states(CLAIMABLE_STATES)),
            )
            .values(
                state=JobState.RUNNING.value,
                attempts=jobs_table.c.attempts + 1,
                started_at=now,
                updated_at=now,
                worker=worker,
            )
            .returning(*jobs_table.c)
        )
        with self._transaction() as conn:
            row = conn.execute(claim).first()
            if row is None:
                return None
            job = _to_job(row)
            self._event(conn, job_id, JobState.RUNNING, job.attempts, now, worker)
            return job

    def finish(
        self,
        job_id: str,
        attempt: int | None,
        state: JobState,
        now: datetime,
        *,
        result: Any = None,
        error: str = "",
    ) -> bool:
        guard = [jobs_table.c.job_id == job_id, jobs_table.c.state == JobState.RUNNING.value]
        if attempt is not None:
            guard.append(jobs_table.c.attempts == attempt)
        with self._transaction() as conn:
            row = conn.execute(
                jobs_table.update()
                .where(*guard)
                .values(
                    state=state.value,
                    result=result,
                    last_error=error,
                    updated_at=now,
                    finished_at=now,
                )
                .returning(jobs_table.c.attempts)
            ).first()
            if row is None:
                return False
            self._event(conn, job_id, state, row.attempts, now, error)
            return True

"""Job state in SQL: the SQLModel tables and the store that moves jobs between states.

Every state change is one guarded UPDATE (`... WHERE state IN (allowed predecessors)`) plus a `job_events` row,
in one transaction, so a late or duplicate event never moves a job backwards and a job is claimed by one run
at a time. The same code serves SQLite (embedded default) and PostgreSQL, where `taskapp.store_postgres` runs
the transitions every job goes through as single statements.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Field, SQLModel

from taskapp.errors import StoreUnavailable
from taskapp.jobs import (
    AWAITING_MESSAGE_STATES,
    CANCELLABLE_STATES,
    CLAIMABLE_STATES,
    RETRYABLE_BY_REQUEST,
    TERMINAL_STATES,
    CancelOutcome,
    Job,
    JobChange,
    JobEvent,
    JobFilter,
    JobState,
    LogLine,
    NewJob,
    Priority,
    SentMessage,
)

#: SQLite only auto-increments `INTEGER PRIMARY KEY`; PostgreSQL gets a BIGINT identity.
_SEQ_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: JSONB on PostgreSQL, JSON text on SQLite; Python None is stored as SQL NULL.
_JSON_TYPE = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
_TIMESTAMP = sa.DateTime(timezone=True)
_UNPUBLISHED = sa.text("published_at IS NULL")


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


jobs_table: sa.Table = JobRow.__table__  # type: ignore[attr-defined]
events_table: sa.Table = JobEventRow.__table__  # type: ignore[attr-defined]
logs_table: sa.Table = JobLogRow.__table__  # type: ignore[attr-defined]
#: Called after a commit with the changes it made to existing jobs (creations are not announced):
#: `taskapp.notify` publishes the job ids for WatchJob, `taskapp.metrics` counts what happened.
ChangeHook = Callable[[list[JobChange]], None]
_CHANGED = "taskapp.changed_jobs"


class JobStore(Protocol):
    """The port the service and the worker use; `SqlJobStore` here, `InMemoryJobStore` in `taskapp.testing`."""

    def create(self, new: NewJob, now: datetime) -> tuple[Job, bool]:
        """Insert the job as QUEUED, or return the job that already has its id; the bool says if it was created."""
        ...

    def discard(self, job_id: str) -> None:
        """Delete a job that was created but could not be published (QUEUED or SCHEDULED, never run)."""
        ...

    def mark_published(self, sent: Iterable[SentMessage], now: datetime) -> None:
        """Record that these messages reached the broker, for jobs still in the state they were sent for."""
        ...

    def get(self, job_id: str) -> Job | None: ...

    def list(self, filter: JobFilter, limit: int, before_seq: int | None) -> list[Job]:
        """Jobs matching `filter`, newest first, with `seq` below `before_seq`."""
        ...

    def cancel(self, job_id: str, now: datetime) -> CancelOutcome | None:
        """Move a cancellable job to CANCELLED; None when there is no such job."""
        ...

    def claim(self, job_id: str, worker: str, now: datetime, lease_seconds: float) -> Job | None:
        """QUEUED/RETRYING (or RUNNING past its lease) -> RUNNING, counting an attempt, while attempts remain.

        None when the job is not claimable now.
        """
        ...

    def succeed(self, job_id: str, attempt: int, result: Any, now: datetime) -> bool:
        """RUNNING (this attempt) -> SUCCEEDED; False when the job had already moved on."""
        ...

    def fail_run(
        self,
        job_id: str,
        attempt: int | None,
        error: str,
        now: datetime,
        *,
        retry_at: datetime | None,
    ) -> JobState | None:
        """End a run that failed: FAILED when `retry_at` is None (retrying cannot help); else RETRYING until
        `retry_at` if attempts remain, DEAD_LETTER if not. Guarded on RUNNING (and `attempt`, when known);
        returns the new state, or None when the job had already moved on.
        """
        ...

    def requeue(self, job_id: str, now: datetime) -> tuple[Job, JobState] | None:
        """FAILED/DEAD_LETTER/CANCELLED -> QUEUED with fresh attempts; returns the job and its previous state."""
        ...

    def create_many(self, news: Sequence[NewJob], now: datetime) -> builtins.list[tuple[Job, bool]]:
        """`create` for a batch, in one transaction; results in the order given."""
        ...

    def discard_many(self, job_ids: Sequence[str]) -> None: ...

    def latest_event(self, job_id: str) -> JobEvent | None: ...

    def events_after(self, job_id: str, after_seq: int) -> builtins.list[JobEvent]: ...

    def logs(self, job_id: str) -> builtins.list[LogLine]: ...

    def count_scheduled(self) -> int: ...

    def unqueue(self, job_id: str, back_to: JobState, now: datetime) -> None:
        """Undo `requeue` when its message could not be published."""
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
        # A host that does not answer must fail a call in seconds, not hang it: the caller gets UNAVAILABLE.
        return sa.create_engine(
            url, pool_size=10, max_overflow=20, pool_pre_ping=True, connect_args={"connect_timeout": 5}
        )

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


def _to_job(row: sa.Row[Any] | Mapping[str, Any]) -> Job:
    m = row._mapping if isinstance(row, sa.Row) else row
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
        lease_expires_at=_aware(m["lease_expires_at"]),
        published_at=_aware(m["published_at"]),
        progress_percent=m["progress_percent"],
        progress_message=m["progress_message"],
    )


def _to_event(row: sa.Row[Any]) -> JobEvent:
    at = _aware(row.at)
    assert at is not None
    return JobEvent(
        job_id=row.job_id,
        state=JobState(row.state),
        attempt=row.attempt,
        at=at,
        message=row.message,
        progress_percent=row.progress,
        seq=row.seq,
    )


def _states(states: frozenset[JobState] | Sequence[JobState]) -> list[str]:
    return [s.value for s in states]


class SqlJobStore:
    """`JobStore` on SQLAlchemy Core over the SQLModel tables."""

    def __init__(self, engine: Engine, change_hooks: Sequence[ChangeHook] = ()) -> None:
        self.engine = engine
        self.change_hooks = tuple(change_hooks)
        dialect = engine.dialect.name
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert

    @classmethod
    def from_url(cls, url: str, change_hooks: Sequence[ChangeHook] = ()) -> SqlJobStore:
        """The store for a database URL: on PostgreSQL, the one whose hot transitions are single statements."""
        engine = create_db_engine(url)
        if engine.dialect.name == "postgresql":
            from taskapp.store_postgres import PostgresJobStore

            return PostgresJobStore(engine, change_hooks)
        return cls(engine, change_hooks)

    def _announce(self, changes: list[JobChange]) -> None:
        """After a commit: the change hooks hear what it did."""
        if changes:
            for hook in self.change_hooks:
                hook(changes)

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One transaction; a lost or refused connection becomes `StoreUnavailable`. After the commit, the
        change hooks hear the events it wrote."""
        changed: list[JobChange] = []
        try:
            with self.engine.begin() as conn:
                conn.info[_CHANGED] = changed
                yield conn
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise StoreUnavailable(f"job database unavailable: {exc.orig or exc}") from exc
        self._announce(changed)

    def _event(
        self,
        conn: Connection,
        job_id: str,
        job_type: str,
        state: JobState,
        attempt: int,
        at: datetime,
        message: str = "",
        progress: int | None = None,
        run_started: datetime | None = None,
    ) -> None:
        """Write a job's event; `run_started` is the claim time when the event is the outcome of a run."""
        conn.execute(
            events_table.insert().values(
                job_id=job_id, state=state.value, attempt=attempt, at=at, message=message, progress=progress
            )
        )
        started = _aware(run_started)
        conn.info[_CHANGED].append(
            JobChange(
                job_id,
                job_type,
                state,
                progress=progress is not None,
                run_seconds=None if started is None else (at - started).total_seconds(),
            )
        )

    def create(self, new: NewJob, now: datetime) -> tuple[Job, bool]:
        [result] = self.create_many([new], now)
        return result

    def discard(self, job_id: str) -> None:
        self.discard_many([job_id])

    def mark_published(self, sent: Iterable[SentMessage], now: datetime) -> None:
        c = jobs_table.c
        keys = [(message.job_id, message.state.value, message.attempts) for message in sent]
        if not keys:
            return
        with self._transaction() as conn:
            conn.execute(
                jobs_table.update()
                .where(sa.tuple_(c.job_id, c.state, c.attempts).in_(keys), c.published_at.is_(None))
                .values(published_at=now)
            )

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
                    sa.select(jobs_table.c.state, jobs_table.c.attempts, jobs_table.c.type).where(
                        jobs_table.c.job_id == job_id
                    )
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
                    .values(
                        state=JobState.CANCELLED.value,
                        updated_at=now,
                        finished_at=now,
                        lease_expires_at=None,
                    )
                )
                if updated.rowcount == 1:
                    self._event(conn, job_id, row.type, JobState.CANCELLED, row.attempts, now, "cancelled")
                    return CancelOutcome(cancelled=True, previous_state=seen, state=JobState.CANCELLED)

    def claim(self, job_id: str, worker: str, now: datetime, lease_seconds: float) -> Job | None:
        c = jobs_table.c
        claim = (
            jobs_table.update()
            .where(
                c.job_id == job_id,
                c.attempts < c.max_attempts,
                sa.or_(
                    c.state.in_(_states(CLAIMABLE_STATES)),
                    sa.and_(c.state == JobState.RUNNING.value, c.lease_expires_at < now),
                ),
            )
            .values(
                state=JobState.RUNNING.value,
                attempts=c.attempts + 1,
                started_at=now,
                finished_at=None,
                result=None,
                updated_at=now,
                worker=worker,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                progress_percent=None,
                progress_message="",
            )
            .returning(*jobs_table.c)
        )
        with self._transaction() as conn:
            row = conn.execute(claim).first()
            if row is None:
                return None
            job = _to_job(row)
            self._event(conn, job_id, job.type, JobState.RUNNING, job.attempts, now, worker)
            return job

    def release(self, job_id: str, worker: str, now: datetime) -> bool:
        """RUNNING on `worker` -> QUEUED, uncounting the attempt: the worker stopped the run to shut down, and
        the broker keeps the message (restored when the worker's channel closes)."""
        c = jobs_table.c
        with self._transaction() as conn:
            row = conn.execute(
                jobs_table.update()
                .where(c.job_id == job_id, c.state == JobState.RUNNING.value, c.worker == worker)
                .values(
                    state=JobState.QUEUED.value,
                    attempts=c.attempts - 1,
                    updated_at=now,
                    started_at=None,
                    lease_expires_at=None,
                    published_at=now,
                )
                .returning(c.attempts, c.type)
            ).first()
            if row is None:
                return False
            self._event(
                conn,
                job_id,
                row.type,
                JobState.QUEUED,
                row.attempts,
                now,
                "returned to the queue: worker shut down",
            )
            return True

    def _running(self, job_id: str, attempt: int | None) -> tuple[sa.ColumnElement[bool], ...]:
        """The guard of a run's outcome: still RUNNING, and on that attempt when it is known."""
        guard = (jobs_table.c.job_id == job_id, jobs_table.c.state == JobState.RUNNING.value)
        if attempt is None:
            return guard
        return (*guard, jobs_table.c.attempts == attempt)

    def succeed(self, job_id: str, attempt: int, result: Any, now: datetime) -> bool:
        c = jobs_table.c
        with self._transaction() as conn:
            row = conn.execute(
                jobs_table.update()
                .where(*self._running(job_id, attempt))
                .values(
                    state=JobState.SUCCEEDED.value,
                    result=result,
                    updated_at=now,
                    finished_at=now,
                    lease_expires_at=None,
                )
                .returning(c.type, c.started_at)
            ).first()
            if row is None:
                return False
            self._event(conn, job_id, row.type, JobState.SUCCEEDED, attempt, now, run_started=row.started_at)
            return True

    def fail_run(
        self,
        job_id: str,
        attempt: int | None,
        error: str,
        now: datetime,
        *,
        retry_at: datetime | None,
    ) -> JobState | None:
        c = jobs_table.c
        values: dict[str, Any] = {
            "last_error": error,
            "updated_at": now,
            "lease_expires_at": None,
            "published_at": None,
        }
        if retry_at is None:
            values.update(state=JobState.FAILED.value, finished_at=now)
        else:
            attempts_left = c.attempts < c.max_attempts
            values.update(
                state=sa.case((attempts_left, JobState.RETRYING.value), else_=JobState.DEAD_LETTER.value),
                finished_at=sa.case((attempts_left, sa.null()), else_=now),
                scheduled_at=sa.case((attempts_left, retry_at), else_=c.scheduled_at),
            )
        with self._transaction() as conn:
            row = conn.execute(
                jobs_table.update()
                .where(*self._running(job_id, attempt))
                .values(**values)
                .returning(c.state, c.attempts, c.type, c.started_at)
            ).first()
            if row is None:
                return None
            new_state = JobState(row.state)
            self._event(
                conn, job_id, row.type, new_state, row.attempts, now, error, run_started=row.started_at
            )
            return new_state

    def requeue(self, job_id: str, now: datetime) -> tuple[Job, JobState] | None:
        with self._transaction() as conn:
            row = conn.execute(sa.select(jobs_table.c.state).where(jobs_table.c.job_id == job_id)).first()
            if row is None or JobState(row.state) not in RETRYABLE_BY_REQUEST:
                return None
            previous = JobState(row.state)
            updated = conn.execute(
                jobs_table.update()
                .where(jobs_table.c.job_id == job_id, jobs_table.c.state == previous.value)
                .values(
                    state=JobState.QUEUED.value,
                    attempts=0,
                    updated_at=now,
                    scheduled_at=now,
                    published_at=None,
                )
                .returning(*jobs_table.c)
            ).first()
            if updated is None:
                return None
            job = _to_job(updated)
            self._event(conn, job_id, job.type, JobState.QUEUED, 0, now, f"retry requested (was {previous})")
            return job, previous

    def unqueue(self, job_id: str, back_to: JobState, now: datetime) -> None:
        with self._transaction() as conn:
            updated = conn.execute(
                jobs_table.update()
                .where(
                    jobs_table.c.job_id == job_id,
                    jobs_table.c.state == JobState.QUEUED.value,
                    jobs_table.c.attempts == 0,
                )
                .values(state=back_to.value, updated_at=now)
                .returning(jobs_table.c.type)
            ).first()
            if updated is not None:
                self._event(conn, job_id, updated.type, back_to, 0, now, "retry could not be published")

    # The scheduler's and `taskapp reconcile`'s queries.
    # (`builtins.list`: this class's own `list` method shadows the builtin in annotations below it.)

    def promote_due(self, now: datetime, limit: int) -> builtins.list[Job]:
        """SCHEDULED jobs whose time has come -> QUEUED (their messages owed), oldest due first."""
        c = jobs_table.c
        due = (
            sa.select(c.seq)
            .where(c.state == JobState.SCHEDULED.value, c.scheduled_at <= now)
            .order_by(c.scheduled_at)
            .limit(limit)
        )
        with self._transaction() as conn:
            rows = conn.execute(
                jobs_table.update()
                .where(c.seq.in_(due.scalar_subquery()), c.state == JobState.SCHEDULED.value)
                .values(state=JobState.QUEUED.value, updated_at=now, published_at=None)
                .returning(*jobs_table.c)
            ).all()
            jobs = [_to_job(row) for row in rows]
            if jobs:
                conn.execute(
                    events_table.insert(),
                    [
                        {"job_id": job.job_id, "state": JobState.QUEUED.value, "attempt": 0, "at": now}
                        for job in jobs
                    ],
                )
                conn.info[_CHANGED].extend(JobChange(job.job_id, job.type, job.state) for job in jobs)
        return jobs

    def unpublished(self, written_before: datetime, limit: int) -> builtins.list[Job]:
        """Jobs owed a message since before `written_before`: their writer died between commit and publish."""
        c = jobs_table.c
        query = (
            sa.select(jobs_table)
            .where(
                c.published_at.is_(None),
                c.state.in_(_states(AWAITING_MESSAGE_STATES)),
                c.updated_at < written_before,
            )
            .order_by(c.updated_at)
            .limit(limit)
        )
        with self._transaction() as conn:
            return [_to_job(row) for row in conn.execute(query)]

    def awaiting_run(self, now: datetime, after_seq: int, limit: int) -> builtins.list[Job]:
        """Jobs that need a message in the broker to make progress: QUEUED, RETRYING, or RUNNING on a run whose
        lease has ended (its worker is gone). Keyset-paged by `seq`."""
        c = jobs_table.c
        query = (
            sa.select(jobs_table)
            .where(
                c.seq > after_seq,
                sa.or_(
                    c.state.in_(_states(AWAITING_MESSAGE_STATES)),
                    sa.and_(c.state == JobState.RUNNING.value, c.lease_expires_at < now),
                ),
            )
            .order_by(c.seq)
            .limit(limit)
        )
        with self._transaction() as conn:
            return [_to_job(row) for row in conn.execute(query)]

    def purge_finished(self, finished_before: datetime, limit: int) -> builtins.list[tuple[str, JobState]]:
        """Delete up to `limit` jobs that finished before `finished_before`, with their events."""
        c = jobs_table.c
        expired = (
            sa.select(c.seq)
            .where(c.finished_at < finished_before, c.state.in_(_states(TERMINAL_STATES)))
            .limit(limit)
        )
        with self._transaction() as conn:
            rows = conn.execute(
                jobs_table.delete()
                .where(
                    c.seq.in_(expired.scalar_subquery()),
                    c.finished_at < finished_before,
                    c.state.in_(_states(TERMINAL_STATES)),
                )
                .returning(c.job_id, c.state)
            ).all()
            purged = [(row.job_id, JobState(row.state)) for row in rows]
            if purged:
                ids = [job_id for job_id, _ in purged]
                conn.execute(events_table.delete().where(events_table.c.job_id.in_(ids)))
                conn.execute(logs_table.delete().where(logs_table.c.job_id.in_(ids)))
        return purged

    # Batches, progress, events and logs (WatchJob, GetJobLogs, SubmitJobs).

    def create_many(self, news: Sequence[NewJob], now: datetime) -> builtins.list[tuple[Job, bool]]:
        """`create` for many jobs in one transaction and one INSERT; results in the order given."""
        rows = [
            {
                "job_id": new.job_id,
                "type": new.type,
                "priority": new.priority.value,
                "state": new.first_state(now).value,
                "payload": new.payload,
                "attempts": 0,
                "max_attempts": new.max_attempts,
                "last_error": "",
                "timeout_seconds": new.timeout_seconds,
                "fingerprint": new.fingerprint,
                "created_at": now,
                "updated_at": now,
                "scheduled_at": new.waits_until(now) or now,
                "worker": "",
            }
            for new in news
        ]
        insert = (
            self._insert(jobs_table)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["job_id"])
            .returning(*jobs_table.c)
        )
        with self._transaction() as conn:
            created = {job.job_id: job for job in map(_to_job, conn.execute(insert))}
            if created:
                conn.execute(
                    events_table.insert(),
                    [
                        {"job_id": job.job_id, "state": job.state.value, "attempt": 0, "at": now}
                        for job in created.values()
                    ],
                )
                # Not announced: nothing can be watching a job that did not exist, nor count it yet.
            others = [new.job_id for new in news if new.job_id not in created]
            existing = (
                {
                    job.job_id: job
                    for job in map(
                        _to_job, conn.execute(sa.select(jobs_table).where(jobs_table.c.job_id.in_(others)))
                    )
                }
                if others
                else {}
            )
        return [
            (created[new.job_id], True) if new.job_id in created else (existing[new.job_id], False)
            for new in news
        ]

    def discard_many(self, job_ids: Sequence[str]) -> None:
        """`discard` for a batch that could not be published."""
        with self._transaction() as conn:
            deleted = (
                conn.execute(
                    jobs_table.delete()
                    .where(
                        jobs_table.c.job_id.in_(job_ids),
                        jobs_table.c.state.in_([JobState.QUEUED.value, JobState.SCHEDULED.value]),
                        jobs_table.c.attempts == 0,
                    )
                    .returning(jobs_table.c.job_id)
                )
                .scalars()
                .all()
            )
            if deleted:
                conn.execute(events_table.delete().where(events_table.c.job_id.in_(deleted)))

    def latest_event(self, job_id: str) -> JobEvent | None:
        """The job's newest event: its current state, and where WatchJob resumes."""
        query = (
            sa.select(events_table)
            .where(events_table.c.job_id == job_id)
            .order_by(events_table.c.seq.desc())
            .limit(1)
        )
        with self._transaction() as conn:
            row = conn.execute(query).first()
        return None if row is None else _to_event(row)

    def events_after(self, job_id: str, after_seq: int) -> builtins.list[JobEvent]:
        """The job's events newer than `after_seq`, oldest first. A job's events commit in `seq` order (each
        transition locks the job's row), so reading past the last one seen never skips one."""
        query = (
            sa.select(events_table)
            .where(events_table.c.job_id == job_id, events_table.c.seq > after_seq)
            .order_by(events_table.c.seq)
        )
        with self._transaction() as conn:
            return [_to_event(row) for row in conn.execute(query)]

    def report_progress(self, job_id: str, attempt: int, percent: int, message: str, now: datetime) -> bool:
        """Record a running attempt's progress on the job and as an event; False if the run is over."""
        with self._transaction() as conn:
            row = conn.execute(
                jobs_table.update()
                .where(*self._running(job_id, attempt))
                .values(progress_percent=percent, progress_message=message)
                .returning(jobs_table.c.type)
            ).first()
            if row is None:
                return False
            self._event(conn, job_id, row.type, JobState.RUNNING, attempt, now, message, progress=percent)
            return True

    def log_usage(self, job_id: str) -> tuple[int, int]:
        """Lines and bytes of the job's stored logs, for the cap."""
        query = sa.select(
            sa.func.count(), sa.func.coalesce(sa.func.sum(sa.func.length(logs_table.c.message)), 0)
        ).where(logs_table.c.job_id == job_id)
        with self._transaction() as conn:
            lines, size = conn.execute(query).one()
        return int(lines), int(size)

    def append_logs(self, job_id: str, lines: Sequence[LogLine]) -> None:
        if not lines:
            return
        with self._transaction() as conn:
            conn.execute(
                logs_table.insert(),
                [
                    {
                        "job_id": job_id,
                        "attempt": line.attempt,
                        "at": line.at,
                        "level": line.level,
                        "message": line.message,
                    }
                    for line in lines
                ],
            )

    def logs(self, job_id: str) -> builtins.list[LogLine]:
        query = sa.select(logs_table).where(logs_table.c.job_id == job_id).order_by(logs_table.c.seq)
        with self._transaction() as conn:
            return [
                LogLine(
                    at=_aware(row.at) or row.at, level=row.level, attempt=row.attempt, message=row.message
                )
                for row in conn.execute(query)
            ]

    def ping(self) -> None:
        """Raise `StoreUnavailable` unless the database answers."""
        with self._transaction() as conn:
            conn.execute(sa.text("SELECT 1"))

    def count_scheduled(self) -> int:
        query = (
            sa.select(sa.func.count())
            .select_from(jobs_table)
            .where(jobs_table.c.state == JobState.SCHEDULED.value)
        )
        with self._transaction() as conn:
            return int(conn.execute(query).scalar_one())

"""`SqlJobStore` on PostgreSQL, with what every job goes through as single statements: created (with the
others of its batch), marked published, claimed, succeeded; and GetJob's read by id.

These set the pace of the whole service. The portable code spends four round trips and most of a millisecond of
SQLAlchemy on each (a pool ping, the statement, the event INSERT, the COMMIT), and compiles a multi-row INSERT
anew for every batch. Here each is one prepared statement on an autocommit connection, batches passed as arrays:
a data-modifying CTE makes the guarded change and its `job_events` rows one atomic statement, so the guarantees
are the portable code's (a read by id: 0.18 ms here against the portable 1 ms). Every other operation is
inherited.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy.engine import Engine

from taskapp.errors import StoreUnavailable
from taskapp.jobs import Job, JobChange, JobState, NewJob, SentMessage
from taskapp.store.port import ChangeHook
from taskapp.store.rows import job_from_row, new_job_row
from taskapp.store.sql import SqlJobStore

#: A claimable job (QUEUED, or RETRYING whose back-off has ended) that no limit or pause holds -> RUNNING,
#: counting the attempt and the run. Any other is claimed by the portable code, which counts under a lock.
CLAIM = """
WITH claimed AS (
    UPDATE jobs
    SET state = 'RUNNING', attempts = attempts + 1, runs = runs + 1, task_id = %(task_id)s,
        started_at = %(now)s, finished_at = NULL, result = NULL, updated_at = %(now)s, worker = %(worker)s,
        lease_expires_at = %(lease_expires_at)s, progress_percent = NULL, progress_message = '',
        waiting_for = ''
    WHERE job_id = %(job_id)s AND attempts < max_attempts
      AND (state = 'QUEUED' OR (state = 'RETRYING' AND scheduled_at <= %(now)s))
      AND waiting_for IN ('', 'released')
      AND concurrency_limit = 0
      AND NOT EXISTS (
        SELECT FROM flow_controls
        WHERE scope IN ('type:' || jobs.type, 'queue:' || jobs.priority, 'key:' || jobs.concurrency_key)
      )
    RETURNING *
), event AS (
    INSERT INTO job_events (job_id, at, state, attempt, message)
    SELECT job_id, %(now)s, 'RUNNING', attempts, %(worker)s FROM claimed
)
SELECT * FROM claimed
"""

#: RUNNING on this attempt -> SUCCEEDED with the result. The state is checked as `sql._row_in_state` does, in a
#: form no index serves: found through a state index, each success scanned every RUNNING job.
SUCCEED = """
WITH succeeded AS (
    UPDATE jobs
    SET state = 'SUCCEEDED', result = %(result)s, updated_at = %(now)s, finished_at = %(now)s,
        lease_expires_at = NULL
    WHERE job_id = %(job_id)s AND state || '' = 'RUNNING' AND attempts = %(attempt)s
    RETURNING job_id, type, started_at
), event AS (
    INSERT INTO job_events (job_id, at, state, attempt, message)
    SELECT job_id, %(now)s, 'SUCCEEDED', %(attempt)s, '' FROM succeeded
)
SELECT type, started_at FROM succeeded
"""


#: New jobs (one JSON array of them, in order) -> the ids and numbers of the rows created, and their first events,
#: in one statement. The rest of each row is what was sent: reading it back cost the gateway ~9 µs of CPU per job.
#: Ids that exist are left as they are and are read apart (`EXISTING`), only when a batch has any: joining the
#: batch to `jobs` here cost every batch that join, and a plan cached while `jobs` was small scanned the whole
#: table for it (9 ms per SubmitJob at 11,000 rows in the benchmark's latency phase, growing with the table until
#: an ANALYZE). The batch travels as one JSON document: psycopg dumps a Python list element by element in Python,
#: and twelve arrays of them were a tenth of the gateway's time in SubmitJobs of 100.
CREATE = """
WITH new AS (
    SELECT *
    FROM jsonb_to_recordset(%(jobs)s::jsonb) AS n(
        job_id text, type text, priority text, state text, payload jsonb, max_attempts int, timeout_seconds int,
        fingerprint text, scheduled_at timestamptz, labels jsonb, concurrency_key text, concurrency_limit int,
        position int
    )
), inserted AS (
    INSERT INTO jobs (job_id, type, priority, state, payload, attempts, max_attempts, last_error,
                      timeout_seconds, fingerprint, created_at, updated_at, scheduled_at, worker,
                      progress_message, labels, concurrency_key, concurrency_limit)
    SELECT job_id, type, priority, state, payload, 0, max_attempts, '', timeout_seconds, fingerprint,
           %(now)s, %(now)s, scheduled_at, '', '', labels, concurrency_key, concurrency_limit
    FROM new ORDER BY position
    ON CONFLICT (job_id) DO NOTHING
    RETURNING job_id, state, seq
), event AS (
    INSERT INTO job_events (job_id, at, state, attempt, message)
    SELECT job_id, %(now)s, state, 0, '' FROM inserted
)
SELECT job_id, seq FROM inserted
"""

#: The columns of a new job that `CREATE` takes from each (the others are the same for every new job).
CREATE_COLUMNS = (
    "job_id", "type", "priority", "state", "payload", "max_attempts", "timeout_seconds", "fingerprint",
    "scheduled_at", "labels", "concurrency_key", "concurrency_limit",
)  # fmt: skip

#: Rows `CREATE` did not create: they existed before, or a concurrent statement inserted them meanwhile.
EXISTING = "SELECT * FROM jobs WHERE job_id = ANY(%(job_id)s::text[])"

#: One job by id: GetJob, and a worker's look at a job it could not claim.
GET = "SELECT * FROM jobs WHERE job_id = %(job_id)s"

#: Each (job, state, attempts) whose message was sent -> published, if the job has not moved on since. It finds
#: the jobs by id: its condition must not imply the outbox index's (`ix_jobs_unpublished`), or PostgreSQL may
#: scan that index and compare each row found with every job of the batch (planned on stale statistics, that
#: took 14 s for a batch of thousands, and the next batch grew while it ran).
MARK_PUBLISHED = """
UPDATE jobs SET published_at = %(now)s
FROM unnest(%(job_id)s::text[], %(state)s::text[], %(attempts)s::int[]) AS sent(job_id, state, attempts)
WHERE jobs.job_id = sent.job_id AND jobs.state = sent.state AND jobs.attempts = sent.attempts
  AND jobs.published_at IS NULL
"""


def create_parameters(rows: Sequence[Mapping[str, Any]], now: datetime) -> dict[str, Any]:
    """`CREATE`'s parameters: the new jobs' rows (`new_job_row`) as one JSON array, each with its place in the
    batch."""
    jobs = []
    for position, row in enumerate(rows):
        job = {column: row[column] for column in CREATE_COLUMNS}
        job["scheduled_at"] = row["scheduled_at"].isoformat()
        job["position"] = position
        jobs.append(job)
    return {"now": now, "jobs": Jsonb(jobs)}


class PostgresJobStore(SqlJobStore):
    def __init__(self, engine: Engine, change_hooks: Sequence[ChangeHook] = ()) -> None:
        super().__init__(engine, change_hooks)
        # What SQLAlchemy would connect with: several hosts too, as libpq takes them.
        _, parameters = engine.dialect.create_connect_args(engine.url)
        parameters.pop("context", None)
        self._parameters: dict[str, Any] = {"connect_timeout": 5, **parameters}
        self._local = threading.local()
        self._names: dict[str, tuple[str, ...]] = {}

    def _connection(self) -> psycopg.Connection[Any]:
        """This thread's autocommit connection: one statement is one transaction, with no BEGIN, COMMIT, pool
        checkout or ping around it. A thread keeps its own, so none waits on another's statement. (A store is
        used in the process that made it: `taskapp.tasks.store_for` makes one per pool process.)"""
        connection: psycopg.Connection[Any] | None = getattr(self._local, "connection", None)
        if connection is None or connection.closed:
            try:
                connection = psycopg.connect(autocommit=True, **self._parameters)
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(f"job database unavailable: {exc}") from exc
            self._local.connection = connection
        return connection

    def _rows(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Run one statement and return its rows. A connection that turns out broken (the server restarted) is
        dropped and the statement tried once more on a new one: each statement here is guarded or idempotent,
        so running it twice cannot do anything twice."""
        for attempt in (1, 2):
            connection = self._connection()
            try:
                with connection.cursor() as cursor:
                    cursor.execute(sql, params)
                    names = self._column_names(sql, cursor)
                    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()] if names else []
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                connection.close()
                if attempt == 2:
                    raise StoreUnavailable(f"job database unavailable: {exc}") from exc
        raise AssertionError("unreachable")

    def _column_names(self, sql: str, cursor: psycopg.Cursor[Any]) -> tuple[str, ...]:
        """The result's column names, read once per statement: psycopg builds its description anew for every
        result (a quarter of a claim's client CPU, with `dict_row`)."""
        names = self._names.get(sql)
        if names is None:
            names = self._names[sql] = tuple(column.name for column in cursor.description or ())
        return names

    def _one(self, sql: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def create_many(self, news: Sequence[NewJob], now: datetime) -> list[tuple[Job, bool]]:
        """One statement for any number of jobs, and one read more for a batch holding ids that existed already;
        results in the order given. A batch with a unique key takes the generic path (`SqlJobStore._create_unique`,
        an upsert per key)."""
        if any(new.unique_key is not None for new in news):
            return super().create_many(news, now)
        rows = [new_job_row(new, now) for new in news]
        # A created job is the row inserted, with the number the database gave it: built here, not read back.
        seqs = {row["job_id"]: row["seq"] for row in self._rows(CREATE, create_parameters(rows, now))}
        written = {
            row["job_id"]: (job_from_row({**row, "seq": seqs[row["job_id"]]}), True)
            for row in rows
            if row["job_id"] in seqs
        }
        existing = [new.job_id for new in news if new.job_id not in written]
        if existing:
            for row in self._rows(EXISTING, {"job_id": existing}):
                written[row["job_id"]] = (job_from_row(row), False)
        # Creations are not announced: nothing can be watching a job that did not exist, nor count it yet.
        return [written[new.job_id] for new in news]

    def mark_published(self, sent: Iterable[SentMessage], now: datetime) -> None:
        messages = list(sent)
        if messages:
            self._rows(
                MARK_PUBLISHED,
                {
                    "now": now,
                    "job_id": [message.job_id for message in messages],
                    "state": [message.state.value for message in messages],
                    "attempts": [message.attempts for message in messages],
                },
            )

    def get(self, job_id: str) -> Job | None:
        row = self._one(GET, {"job_id": job_id})
        return None if row is None else job_from_row(row)

    def claim(
        self, job_id: str, worker: str, now: datetime, lease_seconds: float, task_id: str
    ) -> Job | None:
        row = self._one(
            CLAIM,
            {
                "job_id": job_id,
                "task_id": task_id,
                "worker": worker,
                "now": now,
                "lease_expires_at": now + timedelta(seconds=lease_seconds),
            },
        )
        if row is None:  # limited, or not claimable: the portable code sorts it out
            return self.claim_under_limits(job_id, worker, now, lease_seconds, task_id)
        job = job_from_row(row)
        self._announce([JobChange(job_id, job.type, JobState.RUNNING)])
        return job

    def succeed(self, job_id: str, attempt: int, result: Any, now: datetime) -> bool:
        row = self._one(
            SUCCEED,
            {
                "job_id": job_id,
                "attempt": attempt,
                "now": now,
                "result": None if result is None else Jsonb(result),
            },
        )
        if row is None:
            return False
        run_seconds = (now - row["started_at"]).total_seconds()
        self._announce([JobChange(job_id, row["type"], JobState.SUCCEEDED, run_seconds=run_seconds)])
        return True

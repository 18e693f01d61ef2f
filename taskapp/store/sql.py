"""`JobStore` on SQLAlchemy Core over the SQLModel tables: the same code for SQLite (the embedded default) and
PostgreSQL, where `taskapp.store.postgres` runs the transitions every job goes through as single statements.

Each change is one guarded UPDATE (`... WHERE state IN (allowed predecessors)`) plus its `job_events` row, in
one transaction.
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from taskapp import rates
from taskapp.errors import StoreUnavailable
from taskapp.jobs import (
    CANCELLABLE_STATES,
    RETRYABLE_BY_REQUEST,
    START_LOOKAHEAD,
    TERMINAL_STATES,
    Activity,
    CancelOutcome,
    FlowControl,
    Job,
    JobChange,
    JobEvent,
    JobFilter,
    JobState,
    LogLine,
    NewJob,
    Priority,
    SentMessage,
    WaitingStats,
    WaitReason,
    WorkerBeat,
    check_run_failure,
    queue_scope,
    scopes_of,
    type_scope,
)
from taskapp.schedules import Schedule
from taskapp.store.port import ChangeHook
from taskapp.store.rows import (
    aware,
    event_from_row,
    job_from_row,
    log_line_from_row,
    new_job_row,
    schedule_from_row,
    schedule_row,
)
from taskapp.store.tables import (
    events_table,
    flow_controls_table,
    jobs_table,
    logs_table,
    schedules_table,
    unique_keys_table,
    workers_table,
)

#: Where a transaction collects the changes it made, for the change hooks after its commit.
_CHANGED = "taskapp.changed_jobs"


def _has_labels(labels: dict[str, str], dialect: str) -> sa.ColumnElement[bool]:
    """Every label, on PostgreSQL as JSONB containment (`@>`, which the GIN index serves)."""
    if dialect == "postgresql":
        return sa.type_coerce(jobs_table.c.labels, postgresql.JSONB).contains(labels)
    return sa.and_(*(jobs_table.c.labels[key].as_string() == value for key, value in labels.items()))


def _minute_and_run_seconds(dialect: str) -> tuple[sa.ColumnElement[Any], sa.ColumnElement[float]]:
    """A job's finishing minute and its last run's length in seconds, in the dialect's own date functions."""
    c = jobs_table.c
    minute: sa.ColumnElement[Any]
    seconds: sa.ColumnElement[Any]
    if dialect == "postgresql":
        minute = sa.func.date_trunc("minute", c.finished_at)
        seconds = sa.func.extract("epoch", c.finished_at - c.started_at)
    else:  # SQLite keeps times as UTC text: 'YYYY-MM-DD HH:MM:SS.ffffff'
        minute = sa.func.strftime("%Y-%m-%d %H:%M:00", c.finished_at)
        seconds = (sa.func.julianday(c.finished_at) - sa.func.julianday(c.started_at)) * 86_400
    return minute, sa.func.coalesce(seconds, 0.0)


def _job(row: sa.Row[Any]) -> Job:
    return job_from_row(row._mapping)


def _states(states: frozenset[JobState] | Sequence[JobState]) -> list[str]:
    return [s.value for s in states]


def _row_in_state(state: JobState) -> sa.ColumnElement[bool]:
    """The state check of a statement that finds its one row by job id, in a form no index serves, so that it
    stays a filter on that row. Written `state = 'RUNNING'`, it let PostgreSQL scan a state index through every
    RUNNING job when its statistics believed them few (a fleet started since the last ANALYZE): 1.9 ms per
    success at 5,000 jobs running, each success scanning them all."""
    return jobs_table.c.state.concat("") == state.value


def _wants_a_run(now: datetime) -> sa.ColumnElement[bool]:
    """`taskapp.jobs.wants_a_run` in SQL: QUEUED, or RETRYING once its back-off has ended; not in a line."""
    c = jobs_table.c
    return sa.and_(
        sa.or_(
            c.state == JobState.QUEUED.value,
            sa.and_(c.state == JobState.RETRYING.value, c.scheduled_at <= now),
        ),
        c.waiting_for.in_([WaitReason.NONE.value, WaitReason.RELEASED.value]),
    )


#: The reasons of a job waiting in a line (`WaitReason.in_line`).
IN_LINE = [reason.value for reason in WaitReason if reason.in_line]
#: A job cancelled while it waited, or let out, keeps its `waiting_for`: only these states count.
_WANTING = [JobState.QUEUED.value, JobState.RETRYING.value]


def _in_line() -> sa.ColumnElement[bool]:
    """Waiting in a line of `taskapp.flow`."""
    c = jobs_table.c
    return sa.and_(c.waiting_for.in_(IN_LINE), c.state.in_(_WANTING))


def _let_out() -> sa.ColumnElement[bool]:
    """Let out of a line, its message on its way, not claimed yet: it holds a slot of its limits."""
    c = jobs_table.c
    return sa.and_(c.waiting_for == WaitReason.RELEASED.value, c.state.in_(_WANTING))


#: Strict priorities first when letting jobs out of a line.
_PRIORITY_ORDER = sa.case({p.value: n for n, p in enumerate(Priority)}, value=jobs_table.c.priority)


def _unlimited() -> sa.ColumnElement[bool]:
    """A job that nothing of `taskapp.flow` holds: no concurrency limit, no control of its type, queue or key."""
    c, controls = jobs_table.c, flow_controls_table.c
    scopes = (
        sa.literal("type:") + c.type,
        sa.literal("queue:") + c.priority,
        sa.literal("key:") + c.concurrency_key,
    )
    return sa.and_(
        c.concurrency_limit == 0,
        ~sa.exists(sa.select(controls.scope).where(controls.scope.in_(scopes)).scalar_subquery()),
    )


def _control(row: sa.Row[Any]) -> FlowControl:
    return FlowControl(
        scope=row.scope,
        max_running=row.max_running,
        paused=bool(row.paused),
        rate=row.rate,
        rate_seconds=row.rate_seconds,
        next_start_at=aware(row.next_start_at),
        last_start_at=aware(row.last_start_at),
    )


class SqlJobStore:
    """`JobStore` on SQLAlchemy Core over the SQLModel tables."""

    def __init__(self, engine: Engine, change_hooks: Sequence[ChangeHook] = ()) -> None:
        self.engine = engine
        self.change_hooks = tuple(change_hooks)
        dialect = engine.dialect.name
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert

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
        started = aware(run_started)
        conn.info[_CHANGED].append(
            JobChange(
                job_id,
                job_type,
                state,
                progress=progress is not None,
                run_seconds=None if started is None else (at - started).total_seconds(),
            )
        )

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
        return None if row is None else _job(row)

    def list(self, filter: JobFilter, limit: int, before_seq: int | None) -> list[Job]:
        query = sa.select(jobs_table).order_by(jobs_table.c.seq.desc()).limit(limit)
        if filter.state is not None:
            query = query.where(jobs_table.c.state == filter.state.value)
        if filter.priority is not None:
            query = query.where(jobs_table.c.priority == filter.priority.value)
        if filter.type is not None:
            query = query.where(jobs_table.c.type == filter.type)
        if filter.created_after is not None:
            query = query.where(jobs_table.c.created_at >= filter.created_after)
        if filter.created_before is not None:
            query = query.where(jobs_table.c.created_at < filter.created_before)
        if filter.job_id_prefix is not None:
            query = query.where(jobs_table.c.job_id.startswith(filter.job_id_prefix, autoescape=True))
        if before_seq is not None:
            query = query.where(jobs_table.c.seq < before_seq)
        with self._transaction() as conn:
            if filter.labels:
                query = query.where(_has_labels(filter.labels, conn.dialect.name))
            return [_job(row) for row in conn.execute(query)]

    def cancel(self, job_id: str, now: datetime) -> CancelOutcome | None:
        with self._transaction() as conn:
            while True:
                row = conn.execute(
                    sa.select(
                        jobs_table.c.state, jobs_table.c.attempts, jobs_table.c.type, jobs_table.c.task_id
                    ).where(jobs_table.c.job_id == job_id)
                ).first()
                if row is None:
                    return None
                seen = JobState(row.state)
                if seen not in CANCELLABLE_STATES:
                    return CancelOutcome(cancelled=False, previous_state=seen, state=seen)
                # Guard on the exact state read: if a worker moved the job meanwhile, read it again.
                updated = conn.execute(
                    jobs_table.update()
                    .where(jobs_table.c.job_id == job_id, _row_in_state(seen))
                    .values(
                        state=JobState.CANCELLED.value,
                        updated_at=now,
                        finished_at=now,
                        lease_expires_at=None,
                    )
                )
                if updated.rowcount == 1:
                    self._event(conn, job_id, row.type, JobState.CANCELLED, row.attempts, now, "cancelled")
                    running = row.task_id if seen is JobState.RUNNING else ""
                    return CancelOutcome(True, previous_state=seen, state=JobState.CANCELLED, task_id=running)

    def claim(
        self, job_id: str, worker: str, now: datetime, lease_seconds: float, task_id: str
    ) -> Job | None:
        with self._transaction() as conn:
            update = self._claiming(job_id, worker, now, lease_seconds, task_id)
            row = conn.execute(update.where(_unlimited())).first()
            if row is None:
                row = self._claim_limited(conn, job_id, worker, now, lease_seconds, task_id)
            return self._claimed(conn, row, worker, now)

    def claim_under_limits(
        self, job_id: str, worker: str, now: datetime, lease_seconds: float, task_id: str
    ) -> Job | None:
        """`claim` for a job that its one-statement claim did not take: limited, or not claimable."""
        with self._transaction() as conn:
            row = self._claim_limited(conn, job_id, worker, now, lease_seconds, task_id)
            return self._claimed(conn, row, worker, now)

    def _claimed(self, conn: Connection, row: sa.Row[Any] | None, worker: str, now: datetime) -> Job | None:
        if row is None:
            return None
        job = _job(row)
        self._event(conn, job.job_id, job.type, JobState.RUNNING, job.attempts, now, worker)
        return job

    @staticmethod
    def _claiming(
        job_id: str,
        worker: str,
        now: datetime,
        lease_seconds: float,
        task_id: str,
        started_at: datetime | None = None,
    ) -> sa.Update:
        """The claim's UPDATE, guarded on the job wanting a run, returning the claimed row. `started_at`: when
        its run starts, if later than now (a rate's start, which its worker waits for)."""
        c = jobs_table.c
        return (
            jobs_table.update()
            .where(c.job_id == job_id, c.attempts < c.max_attempts, _wants_a_run(now))
            .values(
                state=JobState.RUNNING.value,
                attempts=c.attempts + 1,
                runs=c.runs + 1,
                task_id=task_id,
                started_at=started_at or now,
                finished_at=None,
                result=None,
                updated_at=now,
                worker=worker,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                progress_percent=None,
                progress_message="",
                waiting_for=WaitReason.NONE.value,
            )
            .returning(*jobs_table.c)
        )

    def _claim_limited(
        self, conn: Connection, job_id: str, worker: str, now: datetime, lease_seconds: float, task_id: str
    ) -> sa.Row[Any] | None:
        """Claim a job under its limits, counted with its type's and key's lock held; or put it in its type's
        line (`taskapp.flow`) when a limit is reached. None when it is not claimed."""
        c = jobs_table.c
        row = conn.execute(
            sa.select(jobs_table).where(c.job_id == job_id, c.attempts < c.max_attempts, _wants_a_run(now))
        ).first()
        if row is None:
            return None
        job = _job(row)
        self._lock_flow(conn, job.type, job.concurrency_key or None)
        controls = self._controls(conn, scopes_of(job))
        max_running = controls[type_scope(job.type)].max_running
        reason = WaitReason.NONE
        # The slots of the jobs let out of the line and on their way are theirs, not a newcomer's; nor is a slot
        # that frees while a line waits for it (the run that freed it lets the line's next job out).
        others = c.job_id != job_id
        newcomer = job.waiting_for is WaitReason.NONE
        same_type, same_key = c.type == job.type, c.concurrency_key == job.concurrency_key
        if any(control.paused for control in controls.values()):
            reason = WaitReason.PAUSED
        elif max_running is not None and (
            self._busy(conn, same_type, others) >= max_running
            or (newcomer and self._line_waits(conn, same_type, WaitReason.TYPE_LIMIT))
        ):
            reason = WaitReason.TYPE_LIMIT
        elif job.concurrency_limit and (
            self._busy(conn, same_key, others) >= job.concurrency_limit
            or (newcomer and self._line_waits(conn, same_key, WaitReason.KEY_LIMIT))
        ):
            reason = WaitReason.KEY_LIMIT
        start_at = now
        if reason is WaitReason.NONE:
            # A start under the rates of its type and key (`rates`): taken now or soon, or given for later.
            start = rates.start_under(list(controls.values()), now, job.waiting_for is WaitReason.RELEASED)
            for before, after in zip(controls.values(), start.controls, strict=True):
                self._keep_starts(conn, before, after)
            start_at = start.at
            if start.waits:
                reason = WaitReason.RATE_LIMIT
        if reason is WaitReason.NONE:
            update = self._claiming(job_id, worker, now, lease_seconds, task_id, started_at=start_at)
            return conn.execute(update.values(flow_limited=True)).first()
        waiting = {"waiting_for": reason.value, "fair_rank": self._turn(conn, job)}
        if reason is WaitReason.RATE_LIMIT:
            waiting["scheduled_at"] = start_at
        conn.execute(
            jobs_table.update()
            .where(c.job_id == job_id)
            .values(published_at=sa.func.coalesce(c.published_at, now), **waiting)
        )
        return None

    @staticmethod
    def _catch_up_starts(conn: Connection, control: FlowControl, now: datetime) -> FlowControl:
        """Starts given by a rate that have passed by more than their spacing (the jobs were let out late: the
        claims that gave them held the type's lock meanwhile, say) move later, all of them alike, so that the
        late ones do not start at once: the rate stays a spacing between starts."""
        spacing = control.start_spacing
        if spacing is None:
            return control
        c = jobs_table.c
        waiting = sa.and_(c.type == control.type, _in_line(), c.waiting_for == WaitReason.RATE_LIMIT.value)
        given = {
            row.job_id: aware(row.scheduled_at) or now
            for row in conn.execute(sa.select(c.job_id, c.scheduled_at).where(waiting))
        }
        earliest = min(given.values(), default=now)
        if earliest >= now - spacing:
            return control
        late = now - earliest
        conn.execute(
            jobs_table.update().where(c.job_id == sa.bindparam("id")).values(scheduled_at=sa.bindparam("at")),
            [{"id": job_id, "at": at + late} for job_id, at in given.items()],
        )
        next_start_at = (control.next_start_at or now) + late
        conn.execute(
            flow_controls_table.update()
            .where(flow_controls_table.c.scope == control.scope)
            .values(next_start_at=next_start_at)
        )
        return dataclasses.replace(control, next_start_at=next_start_at)

    @staticmethod
    def _keep_starts(conn: Connection, before: FlowControl, after: FlowControl) -> None:
        """Write what a start changed of a rate's control."""
        if after == before:
            return
        conn.execute(
            flow_controls_table.update()
            .where(flow_controls_table.c.scope == after.scope)
            .values(next_start_at=after.next_start_at, last_start_at=after.last_start_at)
        )

    def _lock_flow(self, conn: Connection, type: str, key: str | None) -> None:
        """Serialize the claims and lettings-out of a type (and a concurrency key): on PostgreSQL with
        transaction-scoped advisory locks, always in the same order; SQLite's writes are serialized already."""
        if conn.dialect.name != "postgresql":
            return
        for scope in sorted({f"type:{type}", *([f"key:{key}"] if key is not None else [])}):
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(scope, 0))))

    @staticmethod
    def _controls(conn: Connection, scopes: Sequence[str]) -> dict[str, FlowControl]:
        """The controls of `scopes`, an idle one for each that has none."""
        controls = flow_controls_table.c
        rows = conn.execute(sa.select(flow_controls_table).where(controls.scope.in_(scopes))).all()
        found = {row.scope: _control(row) for row in rows}
        return {scope: found.get(scope, FlowControl(scope)) for scope in scopes}

    @staticmethod
    def _busy(conn: Connection, condition: sa.ColumnElement[bool], let_out: sa.ColumnElement[bool]) -> int:
        """RUNNING jobs matching `condition`, and those let out of a line and not claimed yet matching `let_out`
        too (their messages are on their way)."""
        c = jobs_table.c
        count = sa.select(sa.func.count())
        running = conn.execute(count.where(c.state == JobState.RUNNING.value, condition)).scalar_one()
        # Two counts, not an OR: each is served by its own index (states; the lines' partial one).
        coming = conn.execute(count.where(_let_out(), condition, let_out)).scalar_one()
        return int(running) + int(coming)

    @staticmethod
    def _line_waits(conn: Connection, condition: sa.ColumnElement[bool], reason: WaitReason) -> bool:
        """Whether jobs matching `condition` wait in a line for `reason`."""
        c = jobs_table.c
        waiting = sa.exists().where(_in_line(), c.waiting_for == reason.value, condition)
        return bool(conn.execute(sa.select(waiting)).scalar_one())

    @staticmethod
    def _turn(conn: Connection, job: Job) -> int:
        """Its turn in its type's line: after the last of its key's waiting jobs, and not before the turn the
        line has reached, so a key that joins is served next, then takes turns with the others."""
        c = jobs_table.c
        in_line = sa.and_(c.type == job.type, _in_line())
        reached, last = conn.execute(
            sa.select(
                sa.select(sa.func.min(c.fair_rank)).where(in_line).scalar_subquery(),
                sa.select(sa.func.max(c.fair_rank))
                .where(in_line, c.concurrency_key == job.concurrency_key)
                .scalar_subquery(),
            )
        ).one()
        return max(reached or 0, last + 1 if last is not None else 0)

    def let_out(self, type: str, now: datetime, most: int) -> builtins.list[Job]:
        c = jobs_table.c
        with self._transaction() as conn:
            self._lock_flow(conn, type, None)
            controls = self._controls(conn, [type_scope(type), *map(queue_scope, Priority)])
            type_control = controls[type_scope(type)]
            if type_control.paused:
                return []
            room = most
            if type_control.max_running is not None:
                room = min(room, type_control.max_running - self._busy(conn, c.type == type, sa.true()))
            if room <= 0:
                return []
            paused_queues = [p.value for p in Priority if controls[queue_scope(p)].paused]
            type_control = self._catch_up_starts(conn, type_control, now)
            # A job given a start by the rate waits for it; one of the others takes the next when let out.
            on_time = sa.or_(
                c.waiting_for != WaitReason.RATE_LIMIT.value, c.scheduled_at <= now + START_LOOKAHEAD
            )
            candidates = conn.execute(
                sa.select(jobs_table)
                .where(c.type == type, _in_line(), c.priority.notin_(paused_queues), on_time)
                .order_by(_PRIORITY_ORDER, c.fair_rank, c.seq)
                .limit(max(room * 4, 50))
            ).all()
            chosen: list[str] = []
            key_room: dict[str, int] = {}
            rate_limited = type_control.start_spacing is not None
            # Of the others, one at most: the next start the rate gives, if it has come.
            starts = 1 if (type_control.next_start_at or now) <= now else 0
            for candidate in map(_job, candidates):
                if len(chosen) == room:
                    break
                if rate_limited and candidate.waiting_for is not WaitReason.RATE_LIMIT:
                    if not starts:
                        continue
                    start_at, given = rates.give_start(type_control, now)
                    if start_at > now:
                        continue
                    self._keep_starts(conn, type_control, given)
                    starts = 0
                if candidate.concurrency_limit:
                    key = candidate.concurrency_key
                    if key not in key_room:
                        busy = self._busy(conn, c.concurrency_key == key, sa.true())
                        key_room[key] = candidate.concurrency_limit - busy
                    if key_room[key] <= 0:
                        continue
                    key_room[key] -= 1
                chosen.append(candidate.job_id)
            if not chosen:
                return []
            rows = conn.execute(
                jobs_table.update()
                .where(c.job_id.in_(chosen), _in_line())
                .values(waiting_for=WaitReason.RELEASED.value, published_at=None, updated_at=now)
                .returning(*jobs_table.c)
            ).all()
        return sorted(map(_job, rows), key=lambda job: chosen.index(job.job_id))

    def running_ids(self, *, type: str | None, key: str | None, most: int) -> builtins.list[str]:
        c = jobs_table.c
        query = sa.select(c.job_id).where(c.state == JobState.RUNNING.value)
        if type is not None:
            query = query.where(c.type == type)
        if key is not None:
            query = query.where(c.concurrency_key == key)
        with self._transaction() as conn:
            return list(conn.execute(query.order_by(c.started_at).limit(most)).scalars())

    def count_ahead(self, job: Job) -> int:
        c = jobs_table.c
        priorities = list(Priority)
        higher = [p.value for p in priorities[: priorities.index(job.priority)]]
        query = (
            sa.select(sa.func.count())
            .where(
                c.state == JobState.QUEUED.value,
                c.waiting_for.in_([WaitReason.NONE.value, WaitReason.RELEASED.value]),
            )
            .where(sa.or_(c.priority.in_(higher), sa.and_(c.priority == job.priority.value, c.seq < job.seq)))
        )
        with self._transaction() as conn:
            return int(conn.execute(query).scalar_one())

    def waiting_stats(self, top_keys: int) -> WaitingStats:
        c = jobs_table.c
        count = sa.func.count().label("count")
        with self._transaction() as conn:
            by_reason = conn.execute(
                sa.select(c.waiting_for, count).where(_in_line()).group_by(c.waiting_for)
            )
            keys = conn.execute(
                sa.select(c.concurrency_key, count)
                .where(_in_line(), c.concurrency_key != "")
                .group_by(c.concurrency_key)
                .order_by(count.desc(), c.concurrency_key)
                .limit(top_keys)
            ).all()
            oldest: dict[Priority, datetime] = {}
            for priority in Priority:
                due = conn.execute(
                    sa.select(c.scheduled_at)
                    .where(
                        c.state == JobState.QUEUED.value,
                        c.priority == priority.value,
                        c.waiting_for.in_([WaitReason.NONE.value, WaitReason.RELEASED.value]),
                    )
                    .order_by(c.seq)
                    .limit(1)
                ).scalar_one_or_none()
                if due is not None:
                    oldest[priority] = aware(due)  # type: ignore[assignment]
            return WaitingStats(
                by_reason={WaitReason(reason): int(waiting) for reason, waiting in by_reason},
                top_keys=[(key, int(waiting)) for key, waiting in keys],
                oldest_due=oldest,
            )

    def types_in_line(self) -> builtins.list[str]:
        c = jobs_table.c
        with self._transaction() as conn:
            return list(conn.execute(sa.select(c.type).where(_in_line()).distinct()).scalars())

    def flow_controls(self, scopes: Sequence[str] | None = None) -> builtins.list[FlowControl]:
        controls = flow_controls_table.c
        query = sa.select(flow_controls_table).order_by(controls.scope)
        if scopes is not None:
            query = query.where(controls.scope.in_(scopes))
        with self._transaction() as conn:
            rows = conn.execute(query).all()
        return [_control(row) for row in rows]

    def put_flow_control(self, control: FlowControl) -> None:
        controls = flow_controls_table.c
        with self._transaction() as conn:
            conn.execute(flow_controls_table.delete().where(controls.scope == control.scope))
            if not control.idle:
                conn.execute(flow_controls_table.insert().values(dataclasses.asdict(control)))

    def renew_leases(
        self, worker: str, task_ids: Mapping[str, str], now: datetime, lease_seconds: float
    ) -> set[str]:
        if not task_ids:
            return set()
        c = jobs_table.c
        with self._transaction() as conn:
            renewed = conn.execute(
                jobs_table.update()
                .where(
                    sa.tuple_(c.job_id, c.task_id).in_(list(task_ids.items())),
                    c.state == JobState.RUNNING.value,
                    c.worker == worker,
                    c.lease_expires_at >= now,
                )
                .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
                .returning(c.job_id)
            )
            return set(renewed.scalars())

    def release(self, job_id: str, worker: str, now: datetime) -> bool:
        """RUNNING on `worker` -> QUEUED, uncounting the attempt: the worker stopped the run to shut down, and
        the broker keeps the message (restored when the worker's channel closes)."""
        c = jobs_table.c
        with self._transaction() as conn:
            row = conn.execute(
                jobs_table.update()
                .where(c.job_id == job_id, _row_in_state(JobState.RUNNING), c.worker == worker)
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

    def _running(
        self, job_id: str, attempt: int, lapsed_by: datetime | None = None
    ) -> tuple[sa.ColumnElement[bool], ...]:
        """The guard of a run's outcome: still RUNNING, on that attempt (and, with `lapsed_by`, with a lease
        that ended before then)."""
        c = jobs_table.c
        guard = (c.job_id == job_id, _row_in_state(JobState.RUNNING), c.attempts == attempt)
        return guard if lapsed_by is None else (*guard, c.lease_expires_at < lapsed_by)

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
        attempt: int,
        outcome: JobState,
        error: str,
        now: datetime,
        *,
        retry_at: datetime | None = None,
        lapsed: bool = False,
    ) -> bool:
        check_run_failure(outcome, retry_at)
        c = jobs_table.c
        values: dict[str, Any] = {
            "state": outcome.value,
            "last_error": error,
            "updated_at": now,
            "lease_expires_at": None,
            "published_at": None,
        }
        if retry_at is None:
            values["finished_at"] = now
        else:
            values["scheduled_at"] = retry_at
        with self._transaction() as conn:
            row = conn.execute(
                jobs_table.update()
                .where(*self._running(job_id, attempt, now if lapsed else None))
                .values(**values)
                .returning(c.type, c.started_at)
            ).first()
            if row is None:
                return False
            self._event(conn, job_id, row.type, outcome, attempt, now, error, run_started=row.started_at)
            return True

    def requeue(self, job_id: str, now: datetime) -> tuple[Job, JobState] | None:
        return next(iter(self.requeue_many([job_id], now)), None)

    def requeue_many(self, job_ids: Sequence[str], now: datetime) -> builtins.list[tuple[Job, JobState]]:
        retryable = [state.value for state in RETRYABLE_BY_REQUEST]
        with self._transaction() as conn:
            previous = dict(
                conn.execute(
                    sa.select(jobs_table.c.job_id, jobs_table.c.state)
                    .where(jobs_table.c.job_id.in_(job_ids), jobs_table.c.state.in_(retryable))
                    .with_for_update()
                ).all()
            )
            if not previous:
                return []
            rows = conn.execute(
                jobs_table.update()
                .where(jobs_table.c.job_id.in_(list(previous)))
                .values(
                    state=JobState.QUEUED.value,
                    attempts=0,
                    updated_at=now,
                    scheduled_at=now,
                    published_at=None,
                    waiting_for=WaitReason.NONE.value,  # out of any line it was in when it ended
                )
                .returning(*jobs_table.c)
            ).all()
            requeued = []
            for row in rows:
                job, was = _job(row), JobState(previous[row.job_id])
                self._event(
                    conn, job.job_id, job.type, JobState.QUEUED, 0, now, f"retry requested (was {was})"
                )
                requeued.append((job, was))
            return requeued

    def unqueue(self, job_id: str, back_to: JobState, now: datetime) -> None:
        with self._transaction() as conn:
            updated = conn.execute(
                jobs_table.update()
                .where(
                    jobs_table.c.job_id == job_id,
                    _row_in_state(JobState.QUEUED),
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
            jobs = [_job(row) for row in rows]
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

    def owed(self, now: datetime, written_before: datetime, limit: int) -> builtins.list[Job]:
        c = jobs_table.c
        query = (
            sa.select(jobs_table)
            .where(
                c.published_at.is_(None),
                sa.or_(
                    sa.and_(c.state == JobState.QUEUED.value, c.updated_at < written_before),
                    sa.and_(c.state == JobState.RETRYING.value, c.scheduled_at <= now),
                ),
            )
            .order_by(c.scheduled_at)
            .limit(limit)
        )
        with self._transaction() as conn:
            return [_job(row) for row in conn.execute(query)]

    def lapsed_runs(self, now: datetime, limit: int) -> builtins.list[Job]:
        c = jobs_table.c
        query = (
            sa.select(jobs_table)
            .where(c.state == JobState.RUNNING.value, c.lease_expires_at < now)
            .order_by(c.lease_expires_at)
            .limit(limit)
        )
        with self._transaction() as conn:
            return [_job(row) for row in conn.execute(query)]

    def expected_messages(self, now: datetime, published_before: datetime) -> tuple[int, int]:
        c = jobs_table.c
        count = sa.func.count()
        query = sa.select(
            count.filter(_wants_a_run(now), c.published_at < published_before),
            count.filter(c.state == JobState.RUNNING.value),
        ).where(c.state.in_(_states([JobState.QUEUED, JobState.RETRYING, JobState.RUNNING])))
        with self._transaction() as conn:
            waiting, running = conn.execute(query).one()
        return int(waiting), int(running)

    def awaiting_run(
        self, now: datetime, published_before: datetime, written_before: datetime, after_seq: int, limit: int
    ) -> builtins.list[Job]:
        c = jobs_table.c
        sent_or_written_before = sa.or_(
            c.published_at < published_before,
            sa.and_(c.published_at.is_(None), c.updated_at < written_before),
        )
        query = (
            sa.select(jobs_table)
            .where(c.seq > after_seq, _wants_a_run(now), sent_or_written_before)
            .order_by(c.seq)
            .limit(limit)
        )
        with self._transaction() as conn:
            return [_job(row) for row in conn.execute(query)]

    def purge_finished(self, finished_before: datetime, limit: int) -> builtins.list[tuple[str, JobState]]:
        """Delete up to `limit` jobs that finished before `finished_before`, with their events, logs and unique
        keys."""
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
                conn.execute(unique_keys_table.delete().where(unique_keys_table.c.job_id.in_(ids)))
        return purged

    # Batches, progress, events and logs (WatchJob, GetJobLogs, SubmitJobs).

    def create_many(self, news: Sequence[NewJob], now: datetime) -> builtins.list[tuple[Job, bool]]:
        """One INSERT for the jobs without a unique key (ids that exist are left as they are), then each job with
        one (`_create_unique`), in one transaction."""
        plain = [new for new in news if new.unique_key is None]
        written: dict[str, tuple[Job, bool]] = {}
        with self._transaction() as conn:
            if plain:
                written.update(self._create_plain(conn, plain, now))
            for new in news:
                if new.unique_key is not None:
                    written[new.job_id] = self._create_unique(conn, new, now)
        return [written[new.job_id] for new in news]

    def _create_plain(
        self, conn: Connection, news: Sequence[NewJob], now: datetime
    ) -> dict[str, tuple[Job, bool]]:
        insert = (
            self._insert(jobs_table)
            .values([new_job_row(new, now) for new in news])
            .on_conflict_do_nothing(index_elements=["job_id"])
            .returning(*jobs_table.c)
        )
        created = {job.job_id: job for job in map(_job, conn.execute(insert))}
        self._first_events(conn, list(created.values()), now)
        others = [new.job_id for new in news if new.job_id not in created]
        query = sa.select(jobs_table).where(jobs_table.c.job_id.in_(others))
        existing = {job.job_id: job for job in map(_job, conn.execute(query))} if others else {}
        return {
            new.job_id: (created[new.job_id], True)
            if new.job_id in created
            else (existing[new.job_id], False)
            for new in news
        }

    def _create_unique(self, conn: Connection, new: NewJob, now: datetime) -> tuple[Job, bool]:
        """The job, unless its id exists (that job), or its unique key is held (the holder, not created).

        The key's row decides: a new key is inserted (a concurrent insert of the same key waits for this one's
        commit, then finds it); a known key's row is locked, then its holder is read in a statement of its own,
        so it sees a holder committed while this one waited (a subquery of the upsert would not, on PostgreSQL).
        """
        c, k = jobs_table.c, unique_keys_table.c
        same_id = conn.execute(sa.select(jobs_table).where(c.job_id == new.job_id)).first()
        if same_id is not None:
            return _job(same_id), False
        expires_at = now + new.unique_for if new.unique_for is not None else None
        taken = conn.execute(
            self._insert(unique_keys_table)
            .values(key=new.unique_key, job_id=new.job_id, expires_at=expires_at)
            .on_conflict_do_nothing(index_elements=[k.key])
            .returning(k.key)
        ).first()
        if taken is None:
            held = conn.execute(
                sa.select(k.job_id, k.expires_at).where(k.key == new.unique_key).with_for_update()
            ).one()
            holder = conn.execute(sa.select(jobs_table).where(c.job_id == held.job_id)).first()
            if holder is not None:
                holder_job = _job(holder)
                until = aware(held.expires_at)
                if (until > now) if until is not None else not holder_job.state.is_terminal:
                    return holder_job, False
            conn.execute(
                unique_keys_table.update()
                .where(k.key == new.unique_key)
                .values(job_id=new.job_id, expires_at=expires_at)
            )
        job = _job(
            conn.execute(jobs_table.insert().values(new_job_row(new, now)).returning(*jobs_table.c)).one()
        )
        self._first_events(conn, [job], now)
        return job, True

    @staticmethod
    def _first_events(conn: Connection, jobs: builtins.list[Job], now: datetime) -> None:
        """New jobs' first events. Not announced: nothing can be watching a job that did not exist, nor count
        it yet."""
        if jobs:
            conn.execute(
                events_table.insert(),
                [{"job_id": job.job_id, "state": job.state.value, "attempt": 0, "at": now} for job in jobs],
            )

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
                conn.execute(unique_keys_table.delete().where(unique_keys_table.c.job_id.in_(deleted)))

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
        return None if row is None else event_from_row(row._mapping)

    def events_after(self, job_id: str, after_seq: int) -> builtins.list[JobEvent]:
        """The job's events newer than `after_seq`, oldest first. A job's events commit in `seq` order (each
        transition locks the job's row), so reading past the last one seen never skips one."""
        query = (
            sa.select(events_table)
            .where(events_table.c.job_id == job_id, events_table.c.seq > after_seq)
            .order_by(events_table.c.seq)
        )
        with self._transaction() as conn:
            return [event_from_row(row._mapping) for row in conn.execute(query)]

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
            return [log_line_from_row(row._mapping) for row in conn.execute(query)]

    def ping(self) -> None:
        """Raise `StoreUnavailable` unless the database answers."""
        with self._transaction() as conn:
            conn.execute(sa.text("SELECT 1"))

    def count_states(self, states: Sequence[JobState]) -> dict[JobState, int]:
        c = jobs_table.c
        query = sa.select(c.state, sa.func.count()).where(c.state.in_(_states(states))).group_by(c.state)
        with self._transaction() as conn:
            counted = {JobState(state): int(count) for state, count in conn.execute(query)}
        return {state: counted.get(state, 0) for state in states}

    def activity(self, since: datetime) -> builtins.list[Activity]:
        c = jobs_table.c
        minute, seconds = _minute_and_run_seconds(self.engine.dialect.name)
        query = (
            sa.select(minute, c.type, c.state, sa.func.count(), sa.func.sum(seconds), sa.func.max(seconds))
            .where(c.finished_at >= since, c.state.in_(_states(TERMINAL_STATES)))
            .group_by(minute, c.type, c.state)
        )
        with self._transaction() as conn:
            rows = conn.execute(query).all()
        return [
            Activity(
                minute=aware(datetime.fromisoformat(at) if isinstance(at, str) else at),  # type: ignore[arg-type]
                type=type,
                state=JobState(state),
                count=int(count),
                run_seconds=float(total or 0),
                max_run_seconds=float(longest or 0),
            )
            for at, type, state, count, total, longest in rows
        ]

    def beat(self, worker: WorkerBeat) -> None:
        values = dataclasses.asdict(worker)
        values["types"] = list(worker.types)
        insert = self._insert(workers_table).values(values)
        upsert = insert.on_conflict_do_update(
            index_elements=[workers_table.c.name],
            set_={key: insert.excluded[key] for key in values if key != "name"},
        )
        with self._transaction() as conn:
            conn.execute(upsert)

    def workers(self, seen_since: datetime) -> builtins.list[WorkerBeat]:
        c = workers_table.c
        query = sa.select(workers_table).where(c.seen_at >= seen_since).order_by(c.name)
        with self._transaction() as conn:
            rows = conn.execute(query).all()
        return [
            WorkerBeat(
                name=row.name,
                hostname=row.hostname,
                pid=row.pid,
                concurrency=row.concurrency,
                started_at=aware(row.started_at),  # type: ignore[arg-type]
                seen_at=aware(row.seen_at),  # type: ignore[arg-type]
                types=tuple(row.types),
            )
            for row in rows
        ]

    # Schedules.

    def get_schedule(self, name: str) -> Schedule | None:
        query = sa.select(schedules_table).where(schedules_table.c.name == name)
        with self._transaction() as conn:
            row = conn.execute(query).first()
        return None if row is None else schedule_from_row(row._mapping)

    def list_schedules(self) -> builtins.list[Schedule]:
        query = sa.select(schedules_table).order_by(schedules_table.c.name)
        with self._transaction() as conn:
            return [schedule_from_row(row._mapping) for row in conn.execute(query)]

    def create_schedule(self, schedule: Schedule) -> Schedule:
        insert = self._insert(schedules_table).values(schedule_row(schedule)).on_conflict_do_nothing()
        with self._transaction() as conn:
            conn.execute(insert)
            row = conn.execute(
                sa.select(schedules_table).where(schedules_table.c.name == schedule.name)
            ).one()
        return schedule_from_row(row._mapping)

    def update_schedule(self, schedule: Schedule) -> Schedule:
        kept = ("name", "created_at", "last_fire_at", "last_job_id", "fired", "skipped", "missed")
        values = {key: value for key, value in schedule_row(schedule).items() if key not in kept}
        c = schedules_table.c
        with self._transaction() as conn:
            row = conn.execute(
                schedules_table.update()
                .where(c.name == schedule.name)
                .values(values)
                .returning(*schedules_table.c)
            ).first()
        return schedule if row is None else schedule_from_row(row._mapping)

    def delete_schedule(self, name: str) -> bool:
        with self._transaction() as conn:
            deleted = conn.execute(schedules_table.delete().where(schedules_table.c.name == name))
        return bool(deleted.rowcount)

    def due_schedules(self, now: datetime, limit: int) -> builtins.list[Schedule]:
        c = schedules_table.c
        query = (
            sa.select(schedules_table)
            .where(c.next_fire_at <= now, c.paused.is_(False))
            .order_by(c.next_fire_at, c.name)
            .limit(limit)
        )
        with self._transaction() as conn:
            return [schedule_from_row(row._mapping) for row in conn.execute(query)]

    def advance_schedule(self, schedule: Schedule, expected_next_fire_at: datetime) -> bool:
        fields = ("next_fire_at", "last_fire_at", "last_job_id", "fired", "skipped", "missed")
        row = schedule_row(schedule)
        c = schedules_table.c
        with self._transaction() as conn:
            updated = conn.execute(
                schedules_table.update()
                .where(c.name == schedule.name, c.next_fire_at == expected_next_fire_at)
                .values({field: row[field] for field in fields})
            )
        return bool(updated.rowcount)

    def count_scheduled(self) -> int:
        query = (
            sa.select(sa.func.count())
            .select_from(jobs_table)
            .where(jobs_table.c.state == JobState.SCHEDULED.value)
        )
        with self._transaction() as conn:
            return int(conn.execute(query).scalar_one())

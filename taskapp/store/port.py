"""The store port: every way taskapp reads and changes job state. Components take a `JobStore`; the backends are
`taskapp.store.sql.SqlJobStore` (SQLite and PostgreSQL), its PostgreSQL fast path, and the in-memory twin
`taskapp.store.memory.InMemoryJobStore`. One contract test body runs on all three (tests/integration/
test_store.py).

Every change is guarded on the state (and, for a run's outcome, the attempt) it starts from, so a late or
duplicate call never moves a job backwards, and it writes the job's event with it, atomically. After a change
commits, the store's change hooks hear it (creations excepted: nothing can be watching a job that did not
exist).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from taskapp.jobs import (
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
    SentMessage,
    WaitingStats,
    WorkerBeat,
)

if TYPE_CHECKING:  # schedules.py types its store with this port
    from taskapp.schedules import Schedule

#: Called after a commit with the changes it made to existing jobs: `taskapp.notify` publishes the job ids for
#: WatchJob, `taskapp.metrics` counts what happened.
ChangeHook = Callable[[list[JobChange]], None]


class JobStore(Protocol):
    # Reading. (`builtins.list`: the `list` method shadows the builtin in annotations below it.)

    def get(self, job_id: str) -> Job | None: ...

    def list(self, filter: JobFilter, limit: int, before_seq: int | None) -> builtins.list[Job]:
        """Jobs matching `filter`, newest first, with `seq` below `before_seq`."""
        ...

    def latest_event(self, job_id: str) -> JobEvent | None:
        """The job's newest event: its current state, and where WatchJob resumes."""
        ...

    def events_after(self, job_id: str, after_seq: int) -> builtins.list[JobEvent]:
        """The job's events newer than `after_seq`, oldest first; reading past the last one seen never skips one."""
        ...

    def logs(self, job_id: str) -> builtins.list[LogLine]: ...

    def count_scheduled(self) -> int: ...

    def count_states(self, states: Sequence[JobState]) -> dict[JobState, int]:
        """How many jobs are in each of `states` (meant for the small ones: not SUCCEEDED)."""
        ...

    def activity(self, since: datetime) -> builtins.list[Activity]:
        """Jobs that finished at or after `since`, counted per minute, type and terminal state."""
        ...

    def workers(self, seen_since: datetime) -> builtins.list[WorkerBeat]:
        """The workers heard from at or after `seen_since`, by name."""
        ...

    def ping(self) -> None:
        """Raise `StoreUnavailable` unless the store answers."""
        ...

    # Submitting, cancelling, retrying (the API).

    def create_many(self, news: Sequence[NewJob], now: datetime) -> builtins.list[tuple[Job, bool]]:
        """Insert each job (QUEUED, or SCHEDULED until its `run_at`) in one transaction, or return the job that
        already has its id, or, for a job with a `unique_key`, the job holding that key (until its `unique_for`
        has passed since its creation, or without one until it has finished); the bool says if it was created.
        Results in the order given."""
        ...

    def discard_many(self, job_ids: Sequence[str]) -> None:
        """Delete jobs that were created but could not be published (QUEUED or SCHEDULED, never run), letting go
        of their unique keys."""
        ...

    def mark_published(self, sent: Iterable[SentMessage], now: datetime) -> None:
        """Record that these messages reached the broker, for jobs still in the state they were sent for."""
        ...

    def cancel(self, job_id: str, now: datetime) -> CancelOutcome | None:
        """Move a cancellable job to CANCELLED; None when there is no such job. A RUNNING job's outcome names
        the task id of its run, to stop it."""
        ...

    def requeue(self, job_id: str, now: datetime) -> tuple[Job, JobState] | None:
        """FAILED/DEAD_LETTER/CANCELLED -> QUEUED with fresh attempts; returns the job and its previous state."""
        ...

    def requeue_many(self, job_ids: Sequence[str], now: datetime) -> builtins.list[tuple[Job, JobState]]:
        """`requeue` for a batch, in one transaction; the jobs no longer retryable are left out."""
        ...

    def unqueue(self, job_id: str, back_to: JobState, now: datetime) -> None:
        """Undo `requeue` when its message could not be published."""
        ...

    # Runs (the worker).

    def claim(
        self, job_id: str, worker: str, now: datetime, lease_seconds: float, task_id: str
    ) -> Job | None:
        """QUEUED, or RETRYING once its back-off has ended (`taskapp.jobs.wants_a_run`) -> RUNNING while attempts
        remain, counting an attempt and a run, recording the delivery's task id and the worker, with a lease of
        `lease_seconds`. None when the job is not claimable now.

        A job under a limit (its concurrency key's, its type's `FlowControl`) is claimed only while its key and
        type run fewer jobs than their limits, counted atomically, and its type and queue are not paused; otherwise it joins its type's line
        (`waiting_for` says why, `fair_rank` when its turn comes) and None is returned: `let_out` releases it.
        """
        ...

    def renew_leases(
        self, worker: str, task_ids: Mapping[str, str], now: datetime, lease_seconds: float
    ) -> set[str]:
        """Extend the leases of `worker`'s runs (job id -> the task id that claimed it), all in one statement;
        returns the job ids whose lease was extended. A lease that has already ended is not: that run is lost,
        and its worker must stop it."""
        ...

    def succeed(self, job_id: str, attempt: int, result: Any, now: datetime) -> bool:
        """RUNNING (this attempt) -> SUCCEEDED; False when the job had already moved on."""
        ...

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
        """RUNNING (this attempt) -> `outcome`, as `taskapp.policy` decided: RETRYING until `retry_at` (its
        message owed from then), or the final FAILED or DEAD_LETTER. With `lapsed`, only if the run's lease ended
        before `now`: a lost run, never a live one. False when the job had already moved on."""
        ...

    def release(self, job_id: str, worker: str, now: datetime) -> bool:
        """RUNNING on `worker` -> QUEUED, uncounting the attempt: the worker stopped the run to shut down, and
        the broker keeps the message."""
        ...

    def report_progress(self, job_id: str, attempt: int, percent: int, message: str, now: datetime) -> bool:
        """Record a running attempt's progress on the job and as an event; False if the run is over."""
        ...

    def log_usage(self, job_id: str) -> tuple[int, int]:
        """Lines and bytes of the job's stored logs, for the cap."""
        ...

    def append_logs(self, job_id: str, lines: Sequence[LogLine]) -> None: ...

    # Flow control (`taskapp.flow`).

    def let_out(self, type: str, now: datetime, most: int) -> builtins.list[Job]:
        """Up to `most` jobs of `type`'s line that its limits have room for now (counting the running jobs and
        those let out before and not claimed yet), by priority, then turn: marked RELEASED with their messages
        owed, for the caller to publish. A job waiting for the start its type's rate gave it is let out when
        that start is less than `START_LOOKAHEAD` away (its `scheduled_at`)."""
        ...

    def running_ids(self, *, type: str | None, key: str | None, most: int) -> builtins.list[str]:
        """RUNNING jobs of `type` and with concurrency `key` (None: any), longest running first."""
        ...

    def count_ahead(self, job: Job) -> int:
        """QUEUED jobs with a message on its way that a worker takes before `job`: of a higher priority, or of
        its own and older."""
        ...

    def waiting_stats(self, top_keys: int) -> WaitingStats:
        """Jobs in lines per reason, the `top_keys` concurrency keys with most jobs in lines, and per queue the
        due time of its oldest job that wants a run (by submission) and is not in a line."""
        ...

    def types_in_line(self) -> builtins.list[str]:
        """The job types that have jobs waiting in a line."""
        ...

    def flow_controls(self, scopes: Sequence[str] | None = None) -> builtins.list[FlowControl]:
        """The controls of `scopes` that exist (those that control something), or all of them, by scope."""
        ...

    def put_flow_control(self, control: FlowControl) -> None:
        """Replace the control of its scope (an idle one is removed)."""
        ...

    # Upkeep (the scheduler and `taskapp reconcile`).

    def promote_due(self, now: datetime, limit: int) -> builtins.list[Job]:
        """SCHEDULED jobs whose time has come -> QUEUED (their messages owed), oldest due first."""
        ...

    def owed(self, now: datetime, written_before: datetime, limit: int) -> builtins.list[Job]:
        """Jobs whose message is owed: RETRYING ones whose back-off has ended, and QUEUED ones written before
        `written_before` (their writer died between its commit and its publish). Longest due first."""
        ...

    def lapsed_runs(self, now: datetime, limit: int) -> builtins.list[Job]:
        """RUNNING jobs whose lease ended before `now`: their worker is gone or cut off. Longest lapsed first."""
        ...

    def expected_messages(self, now: datetime, published_before: datetime) -> tuple[int, int]:
        """How many messages the broker should hold: jobs that want a run and were published before
        `published_before` (waiting in a queue, or just taken by a worker), and RUNNING jobs (whose message
        its worker holds until the run ends)."""
        ...

    def awaiting_run(
        self, now: datetime, published_before: datetime, written_before: datetime, after_seq: int, limit: int
    ) -> builtins.list[Job]:
        """Jobs that need a message in the broker now (`taskapp.jobs.wants_a_run`) and were published before
        `published_before` (a later message may not show in what was read of the broker yet), or written before
        `written_before` and not marked published yet (their message may have been lost before the mark
        landed), keyset-paged by `seq`."""
        ...

    def beat(self, worker: WorkerBeat) -> None:
        """Record that `worker` is alive (one row per worker name, the latest beat kept)."""
        ...

    # Schedules (`taskapp.schedules`).

    def get_schedule(self, name: str) -> Schedule | None: ...

    def list_schedules(self) -> builtins.list[Schedule]:
        """Every schedule, by name."""
        ...

    def create_schedule(self, schedule: Schedule) -> Schedule:
        """Insert it; if one of its name was created meanwhile, that one is kept and returned."""
        ...

    def update_schedule(self, schedule: Schedule) -> Schedule:
        """Its definition and next firing (its firings' record is kept as stored)."""
        ...

    def delete_schedule(self, name: str) -> bool: ...

    def due_schedules(self, now: datetime, limit: int) -> builtins.list[Schedule]:
        """Active schedules whose next firing is at or before `now`, earliest first."""
        ...

    def advance_schedule(self, schedule: Schedule, expected_next_fire_at: datetime) -> bool:
        """Record a pass's firings (next, last, counters) if its next firing is still `expected_next_fire_at`:
        of two schedulers firing one schedule, one advances it."""
        ...

    def purge_finished(self, finished_before: datetime, limit: int) -> builtins.list[tuple[str, JobState]]:
        """Delete up to `limit` jobs that finished before `finished_before`, with their events, logs and unique
        keys."""
        ...

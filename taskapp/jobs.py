"""The Job value and its states and priorities: what crosses every boundary of taskapp."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple


class JobState(enum.StrEnum):
    SCHEDULED = "SCHEDULED"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    DEAD_LETTER = "DEAD_LETTER"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.DEAD_LETTER, JobState.CANCELLED})
#: States RetryJob re-runs from, with fresh attempts.
RETRYABLE_BY_REQUEST = frozenset({JobState.FAILED, JobState.DEAD_LETTER, JobState.CANCELLED})
#: States CancelJob moves to CANCELLED.
CANCELLABLE_STATES = frozenset({JobState.SCHEDULED, JobState.QUEUED, JobState.RETRYING, JobState.RUNNING})
#: States a failed run may end in: another attempt later, or a final failure.
RUN_FAILURE_STATES = frozenset({JobState.RETRYING, JobState.FAILED, JobState.DEAD_LETTER})


def check_run_failure(outcome: JobState, retry_at: datetime | None) -> None:
    """A failed run ends RETRYING with the time of its next attempt, or FAILED or DEAD_LETTER without one."""
    if outcome not in RUN_FAILURE_STATES or (retry_at is not None) != (outcome is JobState.RETRYING):
        raise ValueError(f"a failed run cannot end {outcome} with retry_at {retry_at}")


class Priority(enum.StrEnum):
    """Each priority is its own broker queue; workers drain them strictly in this order, highest first."""

    CRITICAL = "critical"
    HIGH = "high"
    DEFAULT = "default"
    LOW = "low"


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated submit request with every default resolved: what the store inserts."""

    job_id: str
    type: str
    priority: Priority
    payload: dict[str, Any]
    max_attempts: int
    timeout_seconds: int
    #: Hash of the fields above but job_id: a repeated job_id must come with the same request.
    fingerprint: str
    #: When to run, if later than now: the job waits in SQL as SCHEDULED until then.
    run_at: datetime | None = None
    #: The caller's key -> value tags, to find the job by (ListJobs); fixed at submit.
    labels: dict[str, str] = field(default_factory=dict)
    #: No other job with this key is created while this one holds it: for `unique_for` from its creation, or,
    #: without it, until this job has finished (the store enforces it: `JobStore.create_many`).
    unique_key: str | None = None
    unique_for: timedelta | None = None
    #: At most `concurrency_limit` jobs with this key run at once, across every worker (`taskapp.flow`).
    concurrency_key: str = ""
    concurrency_limit: int = 0

    def waits_until(self, now: datetime) -> datetime | None:
        """`run_at` if it is still ahead of `now` (the job starts SCHEDULED), else None (it starts QUEUED)."""
        return self.run_at if self.run_at is not None and self.run_at > now else None

    def first_state(self, now: datetime) -> JobState:
        return JobState.QUEUED if self.waits_until(now) is None else JobState.SCHEDULED


class WaitReason(enum.StrEnum):
    """Why a job that wants a run waits in SQL, without a message in the broker, until `taskapp.flow` lets it
    out of the line (`RELEASED`, its message on its way)."""

    NONE = ""
    #: Its concurrency key has `concurrency_limit` jobs running.
    KEY_LIMIT = "key_limit"
    #: Its type has its `max_running` jobs running (`FlowControl`).
    TYPE_LIMIT = "type_limit"
    #: Its type or its priority queue is paused (`FlowControl`).
    PAUSED = "paused"
    #: Its type starts at most `rate` jobs per `rate_seconds`: it waits for the start it was given
    #: (`scheduled_at`).
    RATE_LIMIT = "rate_limit"
    RELEASED = "released"

    @property
    def in_line(self) -> bool:
        return self not in (WaitReason.NONE, WaitReason.RELEASED)


#: A job waiting for the start its type's rate gave it is let out this much ahead, its message sent with the
#: time left as a countdown: it starts on time, not at the next pass of the scheduler after it.
START_LOOKAHEAD = timedelta(seconds=0.5)


def wants_a_run(
    state: JobState, scheduled_at: datetime, now: datetime, waiting_for: WaitReason = WaitReason.NONE
) -> bool:
    """Whether a job may be claimed now, and so calls for a message in the broker: QUEUED, or RETRYING once its
    back-off has ended, and not waiting in a line of `taskapp.flow`. (A RETRYING job's message is published when
    it is due, never before.)"""
    if waiting_for.in_line:
        return False
    return state is JobState.QUEUED or (state is JobState.RETRYING and scheduled_at <= now)


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    type: str
    priority: Priority
    state: JobState
    payload: dict[str, Any]
    result: Any
    attempts: int
    max_attempts: int
    last_error: str
    timeout_seconds: int
    created_at: datetime
    updated_at: datetime
    scheduled_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker: str
    #: Position in the global insertion order; ListJobs pages on it.
    seq: int
    fingerprint: str
    #: While RUNNING: until when the run may be live. Its worker renews the lease while the run lives; past it,
    #: the run is lost (its worker is gone or cut off, and has stopped it) and the scheduler rescues the job.
    lease_expires_at: datetime | None = None
    #: When the message its state calls for reached the broker; None while one is owed (the outbox).
    published_at: datetime | None = None
    #: What the handler last reported (`JobContext.report_progress`); None until it does.
    progress_percent: int | None = None
    progress_message: str = ""
    #: Runs ever claimed, across RetryJob's fresh attempts: numbers each run's Celery task id.
    runs: int = 0
    #: The Celery task id of the delivery that claimed the current (or last) run.
    task_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    #: At most `concurrency_limit` jobs with this key run at once (0: no limit).
    concurrency_key: str = ""
    concurrency_limit: int = 0
    #: Why it waits in SQL for a slot (`taskapp.flow`), and its turn among the jobs of its type that wait:
    #: each key's jobs take turns (start-time fair queueing), within a priority.
    waiting_for: WaitReason = WaitReason.NONE
    fair_rank: int = 0
    #: Claimed under a limit: its run's end lets the next waiting job of its type or key out of the line.
    flow_limited: bool = False


#: Seconds between a job's soft time limit (`timeout_seconds`, raised inside the handler) and the hard one
#: (the pool kills the process).
HARD_LIMIT_GRACE = 5


def hard_time_limit(timeout_seconds: int) -> int:
    return timeout_seconds + HARD_LIMIT_GRACE


class SentMessage(NamedTuple):
    """What a published message was for: the outbox marks a job published only if it has not moved on since."""

    job_id: str
    state: JobState
    attempts: int

    @classmethod
    def of(cls, job: Job) -> SentMessage:
        return cls(job.job_id, job.state, job.attempts)


@dataclass(frozen=True, slots=True)
class JobFilter:
    """ListJobs filters; None (or no labels) means any."""

    state: JobState | None = None
    priority: Priority | None = None
    type: str | None = None
    #: Every one of these labels, with these values.
    labels: dict[str, str] = field(default_factory=dict)
    #: created_after <= created_at < created_before.
    created_after: datetime | None = None
    created_before: datetime | None = None
    job_id_prefix: str | None = None


@dataclass(frozen=True, slots=True)
class BulkOutcome:
    """What CancelJobs or RetryJobs did (in a dry run: would do)."""

    acted_on: int
    #: Matched, but in a state that does not allow the action.
    skipped: int


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    cancelled: bool
    #: The state before the call: a RUNNING job must also be stopped on its worker.
    previous_state: JobState
    state: JobState
    #: The Celery task id of the run to stop, when the job was RUNNING.
    task_id: str = ""


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One change of a job: a state it entered, or a progress report (state RUNNING, `progress_percent` set)."""

    job_id: str
    state: JobState
    attempt: int
    at: datetime
    message: str = ""
    progress_percent: int | None = None
    #: Position in the global event order; WatchJob resumes after it.
    seq: int = 0


@dataclass(frozen=True, slots=True)
class JobChange:
    """A job's event as the store's change hooks hear it after the commit: WatchJob's wake-ups, job metrics."""

    job_id: str
    type: str
    state: JobState
    #: A progress report: the job is still RUNNING, its state did not change.
    progress: bool = False
    #: Seconds from the claim to this change, when it is the outcome of a run.
    run_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class LogLine:
    at: datetime
    level: str
    attempt: int
    message: str


@dataclass(frozen=True, slots=True)
class WaitingStats:
    """What waits, for the metrics: jobs in flow control's lines by reason, the keys with the most of them, and
    when the oldest job of each queue that wants a run now became due."""

    by_reason: dict[WaitReason, int]
    top_keys: list[tuple[str, int]]
    oldest_due: dict[Priority, datetime]


@dataclass(frozen=True, slots=True)
class QueueStats:
    #: Messages waiting per priority, highest first.
    depths: dict[Priority, int]
    dead_letter: int
    scheduled: int
    workers: list[str]


@dataclass(frozen=True, slots=True)
class WorkerBeat:
    """A worker's main process saying it is alive (every sixth of the lease), kept in SQL: the console's
    workers page shows when each was last heard from, even one long gone."""

    name: str
    hostname: str
    pid: int
    concurrency: int
    started_at: datetime
    seen_at: datetime
    #: The job types it has loaded (ExplainJob: is any worker answering that runs a job's type?).
    types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Activity:
    """Jobs of one type that ended in one state within one minute, and how long their last runs took."""

    minute: datetime
    type: str
    state: JobState
    count: int
    #: Sum and maximum of (finished_at - started_at) over those jobs, in seconds.
    run_seconds: float
    max_run_seconds: float


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    """One job to submit (SubmitJob's request; `JobSpec` in the Python client). None means "not given": the job
    type's default, or for `job_id` a UUID the gateway makes."""

    type: str
    payload: dict[str, Any] | None = None
    #: An idempotency key: the same request again answers the existing job with `created` False.
    job_id: str | None = None
    priority: Priority | None = None
    max_attempts: int | None = None
    timeout_seconds: int | None = None
    #: When to run: later makes the job SCHEDULED until then; a time already past queues it at once. A naive
    #: datetime is this machine's local time, as everywhere in Python (the client sends it so).
    run_at: datetime | None = None
    #: Key -> value tags to find the job by (ListJobs' `labels` filter).
    labels: dict[str, str] | None = None
    #: Another submit with this key while the job holds it (for `unique_for`, or until the job has finished)
    #: gets this job back with `created` false. The job type's default key when None.
    unique_key: str | None = None
    unique_for: timedelta | None = None
    #: At most `concurrency_limit` jobs with this key run at once, across every worker. The job type's default
    #: key and limit when None.
    concurrency_key: str | None = None
    concurrency_limit: int | None = None


@dataclass(frozen=True, slots=True)
class FlowControl:
    """An operator's control over a job type or a priority queue (`taskapp.flow`), kept in SQL and read by every
    claim of their jobs."""

    #: "type:<job type>", "queue:<priority>" or "key:<concurrency key>" (`type_scope`, `queue_scope`,
    #: `key_scope`).
    scope: str
    #: At most this many jobs of the type run at once across every worker (types only; None: no limit).
    max_running: int | None = None
    #: None of its jobs starts while paused; those running finish.
    paused: bool = False
    #: At most `rate` starts per `rate_seconds`, evenly spaced (types only; None: no rate limit).
    rate: int | None = None
    rate_seconds: float = 1.0
    #: The next start the rate gives, and the last start taken (kept by the store: `taskapp.rates`).
    next_start_at: datetime | None = None
    last_start_at: datetime | None = None

    @property
    def idle(self) -> bool:
        """Controls nothing: not kept."""
        return self.max_running is None and not self.paused and self.rate is None

    @property
    def start_spacing(self) -> timedelta | None:
        """The time between two starts its rate allows."""
        return None if self.rate is None else timedelta(seconds=self.rate_seconds / self.rate)

    @property
    def type(self) -> str | None:
        kind, _, name = self.scope.partition(":")
        return name if kind == "type" else None

    @property
    def queue(self) -> Priority | None:
        kind, _, name = self.scope.partition(":")
        return Priority(name) if kind == "queue" else None

    @property
    def key(self) -> str | None:
        kind, _, name = self.scope.partition(":")
        return name if kind == "key" else None


def type_scope(type: str) -> str:
    return f"type:{type}"


def queue_scope(priority: Priority) -> str:
    return f"queue:{priority.value}"


def key_scope(key: str) -> str:
    return f"key:{key}"


def scopes_of(job: Job) -> list[str]:
    """The scopes whose controls hold `job`: its type's, its queue's, and its concurrency key's."""
    return [
        type_scope(job.type),
        queue_scope(job.priority),
        *([key_scope(job.concurrency_key)] if job.concurrency_key else []),
    ]


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    job: Job
    created: bool
    #: When this call committed the job and when it published its message (None: it did not).
    committed_at: datetime | None = None
    published_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[Job]
    #: Empty on the last page.
    next_page_token: str

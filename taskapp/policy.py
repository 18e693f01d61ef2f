"""What the worker does when a run fails or a claim is refused: pure decisions, no I/O.

`classify` names what ended a run from the exception Celery reports; `decide` turns that, the attempt and the
job's `max_attempts` into a decision: retry after a back-off, dead-letter, fail, give the job back to the queue,
or record nothing. `after_refused_claim` decides what a delivery does with a job it could not claim. The Celery
hooks (`taskapp.tasks`, `taskapp.mirror`) only apply these decisions, so the whole table is unit-tested here
(tests/unit/test_policy.py) rather than through processes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from billiard.exceptions import Terminated, WorkerLostError
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from taskapp.errors import PermanentError
from taskapp.jobs import Job, JobState

#: Exponential back-off: 1 s, 2 s, 4 s ... up to this many seconds, each stretched by up to `BACKOFF_JITTER`.
BACKOFF_MAX_SECONDS = 600.0
#: Each wait grows by up to this fraction at random, so jobs failing together spread out; wait n+1 (2^n s) is
#: still longer than wait n at its longest (1.25 · 2^(n-1) s): docs/decisions/0002.
BACKOFF_JITTER = 0.25


class Failure(enum.Enum):
    """What ended a run."""

    #: The handler raised an error its job type declares retryable.
    RETRYABLE_ERROR = "retryable error"
    #: `PermanentError`, or any error the job type does not declare retryable: retrying cannot help.
    PERMANENT_ERROR = "permanent error"
    #: The run passed `timeout_seconds` (the soft limit, raised inside the handler).
    TIMEOUT = "timeout"
    #: The run ignored its soft limit and was killed at the hard one.
    KILLED_AT_TIMEOUT = "killed at timeout"
    #: The pool process running it died (a crash, the OOM killer, kill -9).
    WORKER_LOST = "worker lost"
    #: It was stopped because the job was cancelled.
    CANCELLED = "cancelled"
    #: Its own worker stopped it to shut down (past `TASKAPP_WORKER_SHUTDOWN_TIMEOUT`).
    SHUTDOWN = "shutdown"


@dataclass(frozen=True, slots=True)
class Retry:
    """RETRYING: another attempt after `delay` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class Finish:
    """A final failure: FAILED (retrying cannot help) or DEAD_LETTER (retryable, but out of attempts)."""

    state: JobState


@dataclass(frozen=True, slots=True)
class Release:
    """QUEUED again with the attempt uncounted: the job did nothing wrong, its worker stopped it."""


@dataclass(frozen=True, slots=True)
class Nothing:
    """Nothing to record: the job has moved on already (it was cancelled)."""


Decision = Retry | Finish | Release | Nothing

_WORKER_GONE = (WorkerLostError, SystemExit, KeyboardInterrupt)


def classify(
    error: BaseException | None,
    retry_on: tuple[type[BaseException], ...],
    *,
    stopped_by_worker: bool = False,
) -> Failure:
    """What ended a run, from the exception Celery reports and the job type's retryable errors.

    `stopped_by_worker`: the worker was killing its runs to shut down when this one ended.
    """
    if stopped_by_worker:
        return Failure.SHUTDOWN
    if isinstance(error, Terminated):
        return Failure.CANCELLED
    if isinstance(error, _WORKER_GONE):
        return Failure.WORKER_LOST
    if isinstance(error, SoftTimeLimitExceeded):
        return Failure.TIMEOUT
    if isinstance(error, TimeLimitExceeded):
        return Failure.KILLED_AT_TIMEOUT
    if isinstance(error, retry_on) and not isinstance(error, PermanentError):
        return Failure.RETRYABLE_ERROR
    return Failure.PERMANENT_ERROR


def backoff(attempt: int, jitter: float) -> float:
    """Seconds before the attempt after `attempt`; `jitter` in [0, 1) picks the stretch."""
    return min(BACKOFF_MAX_SECONDS, 2.0 ** (attempt - 1)) * (1 + BACKOFF_JITTER * jitter)


def decide(failure: Failure, attempt: int, max_attempts: int, jitter: float) -> Decision:
    """What to do after `failure` ended run number `attempt` of a job allowed `max_attempts` runs."""
    if failure is Failure.CANCELLED:
        return Nothing()
    if failure is Failure.SHUTDOWN:
        return Release()
    if failure is Failure.PERMANENT_ERROR:
        return Finish(JobState.FAILED)
    if attempt >= max_attempts:
        return Finish(JobState.DEAD_LETTER)
    return Retry(backoff(attempt, jitter))


@dataclass(frozen=True, slots=True)
class Drop:
    """Acknowledge the message and do nothing: the job is not to run (cancelled, finished, unknown), or it runs
    elsewhere under a live lease (if that run is lost, its lease lapses and the scheduler rescues the job)."""


@dataclass(frozen=True, slots=True)
class PutOff:
    """The job is RETRYING and its back-off has not ended (the message came early): deliver it again after
    `delay` seconds, never drop it."""

    delay: float


@dataclass(frozen=True, slots=True)
class EndLostRun:
    """The job's last run lost its lease: end that run as a lost one (`decide` with WORKER_LOST) rather than
    wait for the scheduler to."""


ClaimRefusal = Drop | PutOff | EndLostRun


def after_refused_claim(job: Job | None, now: datetime) -> ClaimRefusal:
    """What a delivery does with a job it could not claim, given the job as it is now."""
    if job is None:
        return Drop()
    if job.state is JobState.RETRYING and job.scheduled_at > now:
        return PutOff((job.scheduled_at - now).total_seconds())
    if job.state is JobState.RUNNING and (job.lease_expires_at is None or job.lease_expires_at < now):
        return EndLostRun()
    return Drop()

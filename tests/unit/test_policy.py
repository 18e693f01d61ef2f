"""The failure policy and the claim decision as tables of cases, with no I/O."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from billiard.exceptions import Terminated, WorkerLostError
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from taskapp.clock import utcnow
from taskapp.errors import PermanentError
from taskapp.jobs import Job, JobState
from taskapp.policy import (
    BACKOFF_MAX_SECONDS,
    Drop,
    EndLostRun,
    Failure,
    Finish,
    Nothing,
    PutOff,
    Release,
    Retry,
    after_refused_claim,
    backoff,
    classify,
    decide,
)
from taskapp.store.memory import InMemoryJobStore
from tests.helpers import create, new_job


class Flaky(Exception):
    """A job type's retryable error."""


class NotDeclared(Exception):
    """An error the job type does not declare retryable."""


@pytest.mark.parametrize(
    ("error", "stopped_by_worker", "failure"),
    [
        (Flaky("503"), False, Failure.RETRYABLE_ERROR),
        (NotDeclared("bug"), False, Failure.PERMANENT_ERROR),
        (PermanentError("bad payload"), False, Failure.PERMANENT_ERROR),
        (SoftTimeLimitExceeded(), False, Failure.TIMEOUT),
        (TimeLimitExceeded(5), False, Failure.KILLED_AT_TIMEOUT),
        (WorkerLostError("signal 9"), False, Failure.WORKER_LOST),
        (SystemExit(1), False, Failure.WORKER_LOST),
        (Terminated(9), False, Failure.CANCELLED),
        (WorkerLostError("signal 9"), True, Failure.SHUTDOWN),
        (None, False, Failure.PERMANENT_ERROR),
    ],
)
def test_classify(error: BaseException | None, stopped_by_worker: bool, failure: Failure) -> None:
    assert classify(error, (Flaky,), stopped_by_worker=stopped_by_worker) is failure


def test_a_permanent_error_is_permanent_even_if_its_type_is_declared_retryable() -> None:
    class Both(Flaky, PermanentError):
        pass

    assert classify(Both(), (Flaky,)) is Failure.PERMANENT_ERROR


@pytest.mark.parametrize(
    ("failure", "attempt", "max_attempts", "decision"),
    [
        # A retryable error with attempts left: back off 1 s, 2 s, 4 s ... (no jitter drawn here).
        (Failure.RETRYABLE_ERROR, 1, 3, Retry(1.0)),
        (Failure.RETRYABLE_ERROR, 2, 3, Retry(2.0)),
        (Failure.RETRYABLE_ERROR, 4, 10, Retry(8.0)),
        # ... on its last attempt: out of attempts.
        (Failure.RETRYABLE_ERROR, 3, 3, Finish(JobState.DEAD_LETTER)),
        (Failure.RETRYABLE_ERROR, 1, 1, Finish(JobState.DEAD_LETTER)),
        # A permanent error fails at once, attempts or not.
        (Failure.PERMANENT_ERROR, 1, 3, Finish(JobState.FAILED)),
        (Failure.PERMANENT_ERROR, 3, 3, Finish(JobState.FAILED)),
        # A timeout, soft or hard, is worth another attempt.
        (Failure.TIMEOUT, 1, 3, Retry(1.0)),
        (Failure.TIMEOUT, 3, 3, Finish(JobState.DEAD_LETTER)),
        (Failure.KILLED_AT_TIMEOUT, 2, 3, Retry(2.0)),
        (Failure.KILLED_AT_TIMEOUT, 3, 3, Finish(JobState.DEAD_LETTER)),
        # A lost worker (or lease) counts as an attempt, backed off like any other.
        (Failure.WORKER_LOST, 1, 3, Retry(1.0)),
        (Failure.WORKER_LOST, 2, 3, Retry(2.0)),
        (Failure.WORKER_LOST, 3, 3, Finish(JobState.DEAD_LETTER)),
        # A cancelled run: the job is CANCELLED already.
        (Failure.CANCELLED, 1, 3, Nothing()),
        (Failure.CANCELLED, 3, 3, Nothing()),
        # The worker's own shutdown: back to the queue, the attempt not spent.
        (Failure.SHUTDOWN, 3, 3, Release()),
    ],
)
def test_decide(failure: Failure, attempt: int, max_attempts: int, decision: object) -> None:
    assert decide(failure, attempt, max_attempts, jitter=0.0) == decision


def test_back_off_is_stretched_by_at_most_a_quarter_and_always_grows() -> None:
    assert backoff(1, 0.0) == 1.0 and backoff(1, 0.999) == pytest.approx(1.25, abs=0.001)
    for attempt in range(1, 9):
        assert backoff(attempt + 1, 0.0) > backoff(attempt, 0.999)


def test_back_off_is_capped() -> None:
    assert backoff(40, 0.0) == BACKOFF_MAX_SECONDS
    assert backoff(40, 0.999) <= BACKOFF_MAX_SECONDS * 1.25


NOW = utcnow()


def claimed(lease_left: float | None) -> Job:
    store = InMemoryJobStore()
    create(store, new_job("j"), NOW)
    job = store.claim("j", "w", NOW, 30, "j@1")
    assert job is not None
    lease = None if lease_left is None else NOW + timedelta(seconds=lease_left)
    return dataclasses.replace(job, lease_expires_at=lease)


def retrying(due_in: float) -> Job:
    return dataclasses.replace(
        claimed(30.0), state=JobState.RETRYING, scheduled_at=NOW + timedelta(seconds=due_in)
    )


@pytest.mark.parametrize(
    ("job", "refusal"),
    [
        (None, Drop()),
        # Another delivery runs it under a live lease: this message is a duplicate.
        (claimed(lease_left=12.0), Drop()),
        # Its run lost its lease: end that run here.
        (claimed(lease_left=-0.1), EndLostRun()),
        (claimed(lease_left=None), EndLostRun()),
        # A retry delivered before its back-off ended: again when it ends.
        (retrying(due_in=2.5), PutOff(2.5)),
        (retrying(due_in=0.0), Drop()),
    ],
)
def test_after_refused_claim(job: Job | None, refusal: object) -> None:
    assert after_refused_claim(job, NOW) == refusal


@pytest.mark.parametrize(
    "state", [JobState.CANCELLED, JobState.SUCCEEDED, JobState.QUEUED, JobState.DEAD_LETTER]
)
def test_a_job_that_is_not_running_or_backing_off_is_dropped(state: JobState) -> None:
    assert after_refused_claim(dataclasses.replace(claimed(30.0), state=state), NOW) == Drop()

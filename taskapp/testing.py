"""In-memory ports for fast unit tests: the same guarded transitions as `SqlJobStore`, no I/O."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from taskapp.errors import BrokerUnavailable
from taskapp.jobs import (
    CANCELLABLE_STATES,
    CLAIMABLE_STATES,
    RETRYABLE_BY_REQUEST,
    CancelOutcome,
    Job,
    JobFilter,
    JobState,
    NewJob,
    SentMessage,
)


class InMemoryJobStore:
    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.events: list[tuple[str, JobState, int]] = []
        self._seq = 0
        self.leases: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def create(self, new: NewJob, now: datetime) -> tuple[Job, bool]:
        with self._lock:
            if new.job_id in self.jobs:
                return self.jobs[new.job_id], False
            self._seq += 1
            waits_until = new.waits_until(now)
            job = Job(
                job_id=new.job_id,
                type=new.type,
                priority=new.priority,
                state=new.first_state(now),
                payload=new.payload,
                result=None,
                attempts=0,
                max_attempts=new.max_attempts,
                last_error="",
                timeout_seconds=new.timeout_seconds,
                created_at=now,
                updated_at=now,
                scheduled_at=waits_until or now,
                started_at=None,
                finished_at=None,
                worker="",
                seq=self._seq,
                fingerprint=new.fingerprint,
            )
            self.jobs[job.job_id] = job
            self.events.append((job.job_id, job.state, 0))
            return job, True

    def create_many(self, news: Sequence[NewJob], now: datetime) -> list[tuple[Job, bool]]:
        return [self.create(new, now) for new in news]

    def discard_many(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            self.discard(job_id)

    def discard(self, job_id: str) -> None:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is not None and job.state in (JobState.QUEUED, JobState.SCHEDULED) and job.attempts == 0:
                del self.jobs[job_id]
                self.events = [e for e in self.events if e[0] != job_id]

    def mark_published(self, sent: Iterable[SentMessage], now: datetime) -> None:
        with self._lock:
            for message in sent:
                job = self.jobs.get(message.job_id)
                if job is not None and (job.state, job.attempts) == (message.state, message.attempts):
                    self.jobs[job.job_id] = dataclasses.replace(job, published_at=job.published_at or now)

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def list(self, filter: JobFilter, limit: int, before_seq: int | None) -> list[Job]:
        matching = [
            job
            for job in sorted(self.jobs.values(), key=lambda j: j.seq, reverse=True)
            if (filter.state is None or job.state is filter.state)
            and (filter.priority is None or job.priority is filter.priority)
            and (filter.type is None or job.type == filter.type)
            and (before_seq is None or job.seq < before_seq)
        ]
        return matching[:limit]

    def _move(self, job: Job, state: JobState, now: datetime, **changes: Any) -> Job:
        moved = dataclasses.replace(job, state=state, updated_at=now, **changes)
        self.jobs[job.job_id] = moved
        self.events.append((job.job_id, state, moved.attempts))
        return moved

    def cancel(self, job_id: str, now: datetime) -> CancelOutcome | None:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            if job.state not in CANCELLABLE_STATES:
                return CancelOutcome(cancelled=False, previous_state=job.state, state=job.state)
            self._move(job, JobState.CANCELLED, now, finished_at=now)
            return CancelOutcome(cancelled=True, previous_state=job.state, state=JobState.CANCELLED)

    def claim(self, job_id: str, worker: str, now: datetime, lease_seconds: float) -> Job | None:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None or job.attempts >= job.max_attempts:
                return None
            lease_over = job.state is JobState.RUNNING and self.leases.get(job_id, now) < now
            if job.state not in CLAIMABLE_STATES and not lease_over:
                return None
            self.leases[job_id] = now + timedelta(seconds=lease_seconds)
            return self._move(
                job,
                JobState.RUNNING,
                now,
                attempts=job.attempts + 1,
                started_at=now,
                finished_at=None,
                result=None,
                worker=worker,
            )

    def _running(self, job_id: str, attempt: int | None) -> Job | None:
        job = self.jobs.get(job_id)
        if job is None or job.state is not JobState.RUNNING or attempt not in (None, job.attempts):
            return None
        return job

    def succeed(self, job_id: str, attempt: int, result: Any, now: datetime) -> bool:
        with self._lock:
            job = self._running(job_id, attempt)
            if job is None:
                return False
            self._move(job, JobState.SUCCEEDED, now, result=result, finished_at=now)
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
        with self._lock:
            job = self._running(job_id, attempt)
            if job is None:
                return None
            if retry_at is None:
                self._move(job, JobState.FAILED, now, last_error=error, finished_at=now)
            elif job.attempts < job.max_attempts:
                self._move(
                    job, JobState.RETRYING, now, last_error=error, scheduled_at=retry_at, published_at=None
                )
            else:
                self._move(job, JobState.DEAD_LETTER, now, last_error=error, finished_at=now)
            return self.jobs[job_id].state

    def requeue(self, job_id: str, now: datetime) -> tuple[Job, JobState] | None:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None or job.state not in RETRYABLE_BY_REQUEST:
                return None
            requeued = self._move(job, JobState.QUEUED, now, attempts=0, scheduled_at=now, published_at=None)
            return requeued, job.state

    def unqueue(self, job_id: str, back_to: JobState, now: datetime) -> None:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is not None and job.state is JobState.QUEUED and job.attempts == 0:
                self._move(job, back_to, now)


class InMemoryPublisher:
    """Records what would have gone to the broker; `down = True` makes it behave like a lost broker."""

    def __init__(self) -> None:
        self.published: list[Job] = []
        self.terminated: list[str] = []
        self.dead_letters_removed: list[str] = []
        self.down = False

    def publish(self, job: Job, countdown: float | None = None) -> None:
        if self.down:
            raise BrokerUnavailable("broker unavailable: (in-memory publisher is down)")
        self.published.append(job)

    def publish_many(self, jobs: Sequence[Job]) -> None:
        if self.down:
            raise BrokerUnavailable("broker unavailable: (in-memory publisher is down)")
        self.published.extend(jobs)

    def terminate(self, job_id: str) -> None:
        self.terminated.append(job_id)

    def remove_dead_letter(self, job_id: str) -> None:
        self.dead_letters_removed.append(job_id)

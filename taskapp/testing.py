"""In-memory ports for fast unit tests: the same guarded transitions as `SqlJobStore`, no I/O."""

from __future__ import annotations

import dataclasses
import threading
from datetime import datetime
from typing import Any

from taskapp.errors import BrokerUnavailable
from taskapp.jobs import (
    CANCELLABLE_STATES,
    CLAIMABLE_STATES,
    CancelOutcome,
    Job,
    JobFilter,
    JobState,
    NewJob,
)


class InMemoryJobStore:
    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.events: list[tuple[str, JobState, int]] = []
        self._seq = 0
        self._lock = threading.Lock()

    def create(self, new: NewJob, now: datetime) -> tuple[Job, bool]:
        with self._lock:
            if new.job_id in self.jobs:
                return self.jobs[new.job_id], False
            self._seq += 1
            job = Job(
                job_id=new.job_id,
                type=new.type,
                priority=new.priority,
                state=JobState.QUEUED,
                payload=new.payload,
                result=None,
                attempts=0,
                max_attempts=new.max_attempts,
                last_error="",
                timeout_seconds=new.timeout_seconds,
                created_at=now,
                updated_at=now,
                scheduled_at=now,
                started_at=None,
                finished_at=None,
                worker="",
                seq=self._seq,
                fingerprint=new.fingerprint,
            )
            self.jobs[job.job_id] = job
            self.events.append((job.job_id, JobState.QUEUED, 0))
            return job, True

    def discard(self, job_id: str) -> None:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is not None and job.state is JobState.QUEUED and job.attempts == 0:
                del self.jobs[job_id]
                self.events = [e for e in self.events if e[0] != job_id]

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

    def claim(self, job_id: str, worker: str, now: datetime) -> Job | None:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None or job.state not in CLAIMABLE_STATES:
                return None
            return self._move(
                job, JobState.RUNNING, now, attempts=job.attempts + 1, started_at=now, worker=worker
            )

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
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None or job.state is not JobState.RUNNING or attempt not in (None, job.attempts):
                return False
            self._move(job, state, now, result=result, last_error=error, finished_at=now)
            return True


class InMemoryPublisher:
    """Records what would have gone to the broker; `down = True` makes it behave like a lost broker."""

    def __init__(self) -> None:
        self.published: list[Job] = []
        self.terminated: list[str] = []
        self.down = False

    def publish(self, job: Job) -> None:
        if self.down:
            raise BrokerUnavailable("broker unavailable: (in-memory publisher is down)")
        self.published.append(job)

    def terminate(self, job_id: str) -> None:
        self.terminated.append(job_id)

"""In-memory twins of the ports that talk to the broker, for fast unit tests (the store's is
`taskapp.store.memory.InMemoryJobStore`)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from taskapp.errors import BrokerUnavailable
from taskapp.jobs import Job


class InMemoryPublisher:
    """Records what would have gone to the broker; `down = True` makes it behave like a lost broker."""

    def __init__(self) -> None:
        self.published: list[Job] = []
        self.terminated: list[str] = []
        self.dead_letters_removed: list[str] = []
        self.dead_lettered: list[str] = []
        self.down = False

    def publish(self, job: Job, countdown: float | None = None) -> None:
        if self.down:
            raise BrokerUnavailable("broker unavailable: (in-memory publisher is down)")
        self.published.append(job)

    def publish_many(self, jobs: Sequence[Job], *, at_front: bool = False) -> None:
        if self.down:
            raise BrokerUnavailable("broker unavailable: (in-memory publisher is down)")
        self.published.extend(jobs)

    def dead_letter(self, job: Job, error: str) -> None:
        self.dead_lettered.append(job.job_id)

    def terminate(self, task_id: str) -> None:
        self.terminated.append(task_id)

    def remove_dead_letters(self, job_ids: Collection[str]) -> None:
        self.dead_letters_removed.extend(sorted(job_ids))

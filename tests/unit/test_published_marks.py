"""Marks of published jobs, taken in bulk: a job submitted through a service with `PublishedMarks` is marked
published a moment later, in one write with the others; closing marks what is pending."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import pytest

from taskapp.clock import utcnow
from taskapp.jobs import SentMessage, SubmitRequest
from taskapp.published_marks import PublishedMarks
from taskapp.registry import load_handlers
from taskapp.service import JobService
from taskapp.store.memory import InMemoryJobStore
from taskapp.testing import InMemoryPublisher
from tests.helpers import wait_for


class CountingStore(InMemoryJobStore):
    def __init__(self) -> None:
        super().__init__()
        self.mark_writes = 0

    def mark_published(self, sent: Iterable[SentMessage], now: datetime) -> None:
        self.mark_writes += 1
        super().mark_published(sent, now)


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()


def service_with(store: CountingStore, marks: PublishedMarks) -> JobService:
    return JobService(store, InMemoryPublisher(), load_handlers(), published_marks=marks)


def published(store: CountingStore, job_ids: list[str]) -> bool:
    return all((job := store.get(job_id)) is not None and job.published_at is not None for job_id in job_ids)


def test_jobs_are_marked_published_together_a_moment_after(store: CountingStore) -> None:
    marks = PublishedMarks(store, utcnow, interval=0.5)
    service = service_with(store, marks)
    try:
        job_ids = [service.submit(SubmitRequest(type="noop")).job.job_id for _ in range(5)]
        assert not published(store, job_ids), "marked at once: the write is not deferred"
        wait_for(lambda: published(store, job_ids), 5, "the jobs to be marked published")
        assert store.mark_writes == 1
    finally:
        marks.close()


def test_closing_marks_what_is_pending(store: CountingStore) -> None:
    marks = PublishedMarks(store, utcnow, interval=3600)
    service = service_with(store, marks)
    job_id = service.submit(SubmitRequest(type="noop")).job.job_id
    assert not published(store, [job_id])
    marks.close()
    assert published(store, [job_id])

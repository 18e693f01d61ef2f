"""SubmitBatcher on its own: calls that arrive while a batch is written share the next one, each caller gets its
own outcome, and a failed write fails exactly the calls of its batch."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from grpc_gateway.batching import SubmitBatcher
from taskapp.clock import utcnow
from taskapp.errors import JobAlreadyExists, StoreUnavailable
from taskapp.jobs import NewJob, Priority, SubmitOutcome
from taskapp.store.memory import InMemoryJobStore
from tests.helpers import create


def new(job_id: str) -> NewJob:
    return NewJob(job_id, "noop", Priority.DEFAULT, {}, 3, 300, fingerprint=job_id)


class Writer:
    """Writes into an in-memory store; the first batch is held until released, so others can pile up."""

    def __init__(self) -> None:
        self.store = InMemoryJobStore()
        self.batches: list[list[str]] = []
        #: Set once the first batch is being written; it is held there until `release` is set.
        self.writing = threading.Event()
        self.release = threading.Event()
        self.fail: set[str] = set()
        #: Jobs the database refuses (bad data): any batch holding one fails, as a whole.
        self.refuse: set[str] = set()

    def __call__(self, news: Sequence[NewJob]) -> list[SubmitOutcome | JobAlreadyExists]:
        self.batches.append([job.job_id for job in news])
        if len(self.batches) == 1:
            self.writing.set()
            self.release.wait(5)
        if self.fail & {job.job_id for job in news}:
            raise StoreUnavailable("job database unavailable: down for the test")
        if self.refuse & {job.job_id for job in news}:
            raise ValueError("the database refused a row")
        outcomes: list[SubmitOutcome | JobAlreadyExists] = []
        for job in news:
            if job.job_id.startswith("taken"):
                outcomes.append(JobAlreadyExists(job.job_id))
            else:
                written, created = create(self.store, job, utcnow())
                outcomes.append(SubmitOutcome(job=written, created=created))
        return outcomes


def test_calls_arriving_during_a_write_share_the_next_batch() -> None:
    writer = Writer()

    async def scenario() -> list[bool]:
        batcher = SubmitBatcher(writer, max_batch=3)
        running = asyncio.create_task(batcher.run())
        first = batcher.submit(new("first"))
        # While the first batch is being written, the next calls wait together.
        assert await asyncio.to_thread(writer.writing.wait, 5)
        later = [batcher.submit(new(f"later-{n}")) for n in range(5)]
        writer.release.set()
        outcomes = await asyncio.gather(first, *later)
        running.cancel()
        return [outcome.created for outcome in outcomes]

    assert asyncio.run(scenario()) == [True] * 6
    assert writer.batches == [["first"], ["later-0", "later-1", "later-2"], ["later-3", "later-4"]]


def test_each_caller_gets_its_own_outcome_and_a_failed_write_fails_only_its_batch() -> None:
    writer = Writer()
    writer.release.set()
    writer.fail = {"doomed"}

    async def scenario() -> tuple[object, ...]:
        batcher = SubmitBatcher(writer)
        running = asyncio.create_task(batcher.run())
        results = await asyncio.gather(
            batcher.submit(new("ok")), batcher.submit(new("taken-1")), return_exceptions=True
        )
        failed = await asyncio.gather(batcher.submit(new("doomed")), return_exceptions=True)
        after = await batcher.submit(new("after"))
        running.cancel()
        return (*results, *failed, after)

    ok, taken, doomed, after = asyncio.run(scenario())
    assert isinstance(ok, SubmitOutcome) and ok.created
    assert isinstance(taken, JobAlreadyExists)
    assert isinstance(doomed, StoreUnavailable)
    assert isinstance(after, SubmitOutcome) and after.created
    assert writer.store.get("doomed") is None


def test_a_batch_the_database_refuses_is_written_again_job_by_job() -> None:
    writer = Writer()
    writer.release.set()
    writer.refuse = {"bad"}

    async def scenario() -> tuple[object, ...]:
        batcher = SubmitBatcher(writer)
        running = asyncio.create_task(batcher.run())
        results = await asyncio.gather(
            batcher.submit(new("ok-1")), batcher.submit(new("bad")), batcher.submit(new("ok-2")),
            return_exceptions=True,
        )  # fmt: skip
        running.cancel()
        return results

    ok_1, bad, ok_2 = asyncio.run(scenario())
    assert isinstance(ok_1, SubmitOutcome) and isinstance(ok_2, SubmitOutcome)
    assert isinstance(bad, ValueError)
    assert writer.batches == [["ok-1", "bad", "ok-2"], ["ok-1"], ["bad"], ["ok-2"]]
    assert writer.store.get("ok-1") is not None and writer.store.get("bad") is None

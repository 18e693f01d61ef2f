"""SubmitJob calls that arrive together are written together.

Each call is validated on its own (its errors are its own), then waits here. One batch is written at a time, in
a worker thread: while it is, the calls that arrive form the next one. So a lone call is written at once, and
under load the INSERT, the publish and the UPDATE are shared by as many calls as arrived meanwhile. A call is
answered only after its batch is committed and published: acknowledged still means committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from taskapp.errors import JobAlreadyExists, Unavailable
from taskapp.jobs import NewJob, SubmitOutcome

log = logging.getLogger(__name__)

#: The most jobs written in one batch; more wait for the next.
MAX_JOBS_PER_WRITE = 500

WriteBatch = Callable[[Sequence[NewJob]], Sequence[SubmitOutcome | JobAlreadyExists]]


class SubmitBatcher:
    def __init__(self, write: WriteBatch, max_batch: int = MAX_JOBS_PER_WRITE) -> None:
        self._write = write
        self._max_batch = max_batch
        self._waiting: list[tuple[NewJob, asyncio.Future[SubmitOutcome]]] = []
        self._arrived = asyncio.Event()

    def submit(self, new: NewJob) -> Awaitable[SubmitOutcome]:
        """The job's outcome, once its batch is written; the batch's error if it could not be."""
        outcome: asyncio.Future[SubmitOutcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((new, outcome))
        self._arrived.set()
        return outcome

    async def run(self) -> None:
        """Write batches until cancelled."""
        while True:
            await self._arrived.wait()
            batch, self._waiting = self._waiting[: self._max_batch], self._waiting[self._max_batch :]
            if not self._waiting:
                self._arrived.clear()
            await self._write_batch(batch)

    async def _write_batch(self, batch: list[tuple[NewJob, asyncio.Future[SubmitOutcome]]]) -> None:
        """Write the batch and answer its callers. If it fails for any reason but an unavailable database or
        broker (which would fail each job alike), each job is written again on its own, so that a job the
        database refuses fails alone instead of failing the calls it was batched with."""
        try:
            outcomes = await asyncio.to_thread(self._write, [new for new, _ in batch])
        except Exception as exc:
            if len(batch) > 1 and not isinstance(exc, Unavailable):
                log.warning("a batch of %d jobs failed (%s): writing them one by one", len(batch), exc)
                for one in batch:
                    await self._write_batch([one])
                return
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for (_, waiter), outcome in zip(batch, outcomes, strict=True):
            if waiter.done():
                continue  # the caller went away; its job is written all the same
            if isinstance(outcome, JobAlreadyExists):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)

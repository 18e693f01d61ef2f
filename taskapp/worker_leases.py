"""A worker's leases: it keeps each run it holds alive in SQL, and stops any run it cannot keep.

Its main process renews the leases of all its runs in one statement every sixth of `TASKAPP_LEASE_SECONDS`. A
run whose lease it could not renew for two thirds of that (the database is away, or this host is cut off from
it) is stopped (SIGKILL) before the lease can end; so is a run whose job has moved on (cancelled, or its lease
lapsed and another run took over). Once a lease has ended the scheduler may rescue the job, and the stop comes
first, so two runs of one job never overlap, even in a partition. (Clocks: the lease ends by the worker's clock
at the last renewal, the rescue by the scheduler's; keep hosts within a few seconds of each other, as NTP does.)

A run whose handler has returned and that waits for the database to take its outcome (`EndingRuns`) is not
stopped: it has nothing left to do that a rescued run could overlap, and stopping it would throw away an
outcome SQL can still take if it answers before the lease ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskapp.clock import utcnow
from taskapp.errors import StoreUnavailable
from taskapp.jobs import JobState
from taskapp.routing import TASK_PREFIX, job_id_of
from taskapp.store.port import JobStore

log = logging.getLogger(__name__)

#: How often the stopping rule is checked, in seconds (it reads only this process's memory).
FENCE_CHECK_SECONDS = 1.0


class EndingRuns:
    """Runs whose handler has returned and whose outcome waits for the database: a pool process marks its run
    with a file in a directory every process of the worker knows (pool processes are forked from the main one).
    Marked only while the database is away, so a run that writes its outcome at once touches no file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def mark(self, task_id: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / task_id).touch()

    def unmark(self, task_id: str) -> None:
        (self.directory / task_id).unlink(missing_ok=True)

    def __contains__(self, task_id: str) -> bool:
        return (self.directory / task_id).exists()


class LeaseKeeper:
    """`runs()` gives the worker's live requests (Celery's `Request`s: `id`, `worker_pid`, `time_start`)."""

    def __init__(
        self,
        store: JobStore,
        worker: str,
        lease_seconds: float,
        runs: Callable[[], list[Any]],
        ending: EndingRuns,
        on_unavailable: Callable[[str], None] = lambda reason: None,
    ) -> None:
        """`on_unavailable`: told why, when a renewal finds the database away (the worker stops consuming: its
        pool processes may all be waiting to write outcomes, with no claim of theirs to find it away)."""
        self.store = store
        self.on_unavailable = on_unavailable
        self.worker = worker
        self.ending = ending
        self.lease_seconds = lease_seconds
        self.renew_every = lease_seconds / 6
        self.stop_after = lease_seconds * 2 / 3
        self._runs = runs
        #: Task id -> when (monotonic) the last renewal that reached SQL was sent.
        self._renewed: dict[str, float] = {}
        #: Task ids of runs this worker stopped, and why: their failure is not the job's.
        self.stopped: dict[str, str] = {}
        #: Task ids of runs past `stop_after` left alone because they are ending (said once each).
        self.spared: set[str] = set()
        self._unavailable = False

    def job_runs(self) -> dict[str, Any]:
        """This worker's job runs that have a process, by task id."""
        return {
            request.id: request
            for request in self._runs()
            if request.worker_pid and str(request.name).startswith(TASK_PREFIX)
        }

    def renew(self) -> None:
        """One renewal of every run's lease; a run whose job has moved on is stopped."""
        runs = self.job_runs()
        for task_id in set(self._renewed) - set(runs):
            del self._renewed[task_id]
        if not runs:
            return
        sent = time.monotonic()
        task_ids = {job_id_of(task_id): task_id for task_id in runs}
        try:
            renewed = self.store.renew_leases(self.worker, task_ids, utcnow(), self.lease_seconds)
            moved_on = [
                job_id for job_id in task_ids if job_id not in renewed and self._moved_on(job_id, task_ids)
            ]
        except StoreUnavailable as exc:
            if not self._unavailable:
                log.warning("cannot renew the leases of %d run(s): %s", len(runs), exc)
                self._unavailable = True
                self.on_unavailable(str(exc))
            return
        if self._unavailable:
            log.warning("renewing leases again")
            self._unavailable = False
        for job_id in renewed:
            self._renewed[task_ids[job_id]] = sent
        for job_id in moved_on:
            self.stop(
                runs[task_ids[job_id]], "its lease ended or its job moved on (cancelled, or run elsewhere)"
            )

    def _moved_on(self, job_id: str, task_ids: dict[str, str]) -> bool:
        """Whether a run whose lease was not renewed must stop. It may simply not be claimed yet (the job is
        still QUEUED or RETRYING), have been claimed just after the renewal, or be ending (its outcome is
        written): then it goes on."""
        job = self.store.get(job_id)
        if job is None:
            return True
        if job.task_id != task_ids[job_id]:
            # Another delivery runs the job: this one is a duplicate, or a run that lost its lease.
            return job.state is JobState.RUNNING
        if job.state is JobState.RUNNING:
            live = job.lease_expires_at is not None and job.lease_expires_at >= utcnow()
            return job.worker != self.worker or not live
        return job.state is JobState.CANCELLED

    def fence(self) -> None:
        """Stop every run whose lease was not renewed for `stop_after` seconds, before it can end, unless its
        handler has returned and it only waits to write its outcome."""
        now = time.monotonic()
        runs = self.job_runs()
        self.spared &= set(runs)
        for task_id, request in runs.items():
            last = self._renewed.get(task_id) or _started(request, now)
            if now - last < self.stop_after or task_id in self.spared:
                continue
            if task_id in self.ending:
                self.spared.add(task_id)
                log.warning(
                    "run %s: lease not renewed for %.0f s, but its handler has returned: not stopped, it waits "
                    "to write its outcome",
                    task_id,
                    now - last,
                )
            else:
                self.stop(request, f"its lease could not be renewed for {now - last:.0f} s")

    def stop(self, request: Any, reason: str) -> None:
        if request.id in self.stopped:
            return
        self.stopped[request.id] = reason
        log.warning("stopping run %s: %s", request.id, reason)
        with contextlib.suppress(ProcessLookupError):  # It ended meanwhile.
            os.kill(request.worker_pid, signal.SIGKILL)

    def start(self) -> None:
        threading.Thread(
            target=self._every, args=(self.renew_every, self.renew), name="leases", daemon=True
        ).start()
        threading.Thread(
            target=self._every, args=(FENCE_CHECK_SECONDS, self.fence), name="fence", daemon=True
        ).start()

    @staticmethod
    def _every(seconds: float, action: Callable[[], None]) -> None:
        while True:
            time.sleep(seconds)
            try:
                action()
            except Exception:  # A thread that dies would leave runs unrenewed or unstopped: log, go on.
                log.exception("lease keeping failed; trying again")


def _started(request: Any, now: float) -> float:
    """When the run started, on the monotonic clock (Celery keeps it as wall time)."""
    started = request.time_start
    return now - (time.time() - started) if started else now

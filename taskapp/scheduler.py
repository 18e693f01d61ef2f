"""The scheduler process: sends the messages SQL says are due or owed, and deletes what retention has expired.

Each pass it (1) moves SCHEDULED jobs whose `run_at` has come to QUEUED and publishes them, (2) publishes
messages owed by the outbox (a gateway or worker died between its commit and its publish), and (3) deletes
finished jobs older than `TASKAPP_RETENTION` in bounded batches. Far schedules therefore live in SQL, never in
the broker, where Redis would redeliver them after the visibility timeout.

Several schedulers may run; one acts at a time, holding a lease in Redis (docs/decisions/0003). Nothing
depends on the lease for correctness: promoting a job is a guarded UPDATE, and a duplicate message is dropped
at claim time, so two schedulers acting at once for a moment only cost a few redundant messages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from redis.exceptions import LockError, RedisError
from redis.lock import Lock

from taskapp.clock import utcnow
from taskapp.errors import BrokerUnavailable, StoreUnavailable
from taskapp.jobs import Job, JobState, SentMessage
from taskapp.notify import ChangePublisher
from taskapp.publisher import CeleryPublisher, Publisher
from taskapp.store.engine import open_store
from taskapp.store.port import JobStore

log = logging.getLogger(__name__)

LEASE_KEY = "taskapp:scheduler"
#: A dead scheduler's lease runs out after this long, and a standby takes over.
LEASE_SECONDS = 3.0
#: Seconds between passes while active: a due job starts within about this much of its `run_at`.
ACTIVE_POLL_SECONDS = 0.25
#: Seconds between a standby's attempts to take the lease.
STANDBY_POLL_SECONDS = 0.5
#: How long the gateway or a worker has to publish what it committed before the scheduler does it instead.
OUTBOX_GRACE = timedelta(seconds=5)
#: Jobs each query of a pass reads or changes at most: a pass stays short however large the backlog.
JOBS_PER_QUERY = 500
#: Finished jobs each retention sweep deletes at most.
JOBS_PER_PURGE = 1_000
#: Seconds between retention sweeps when the last one found nothing more to delete.
PURGE_INTERVAL_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class PassReport:
    promoted: int
    republished: int
    purged: int


class Scheduler:
    """One pass of the scheduler's work at a time; the lease and the loop are `run_scheduler`'s."""

    def __init__(
        self,
        store: JobStore,
        publisher: Publisher,
        *,
        retention: timedelta,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.retention = retention
        self._clock = clock
        self._next_purge: datetime | None = None

    def run_pass(self) -> PassReport:
        return PassReport(
            promoted=self.publish_due(),
            republished=self.publish_owed(),
            purged=self.purge_expired(),
        )

    def publish_due(self) -> int:
        """SCHEDULED -> QUEUED for every job whose time has come, then publish them."""
        total = 0
        while due := self.store.promote_due(self._clock(), JOBS_PER_QUERY):
            self._publish(due)
            total += len(due)
            if len(due) < JOBS_PER_QUERY:
                break
        return total

    def publish_owed(self) -> int:
        """Publish what the outbox says is owed and was not sent within the grace period."""
        owed = self.store.unpublished(self._clock() - OUTBOX_GRACE, JOBS_PER_QUERY)
        if owed:
            log.warning("publishing %d job(s) whose message was never sent", len(owed))
            self._publish(owed)
        return len(owed)

    def purge_expired(self) -> int:
        """Delete one batch of finished jobs past retention; sweep again soon while batches come back full."""
        now = self._clock()
        if self._next_purge is not None and now < self._next_purge:
            return 0
        purged = self.store.purge_finished(now - self.retention, JOBS_PER_PURGE)
        dead = [job_id for job_id, state in purged if state is JobState.DEAD_LETTER]
        if dead:
            self.publisher.remove_dead_letters(set(dead))
        if purged:
            log.info("deleted %d finished job(s) older than %s", len(purged), self.retention)
        full = len(purged) == JOBS_PER_PURGE
        self._next_purge = None if full else now + timedelta(seconds=PURGE_INTERVAL_SECONDS)
        return len(purged)

    def _publish(self, jobs: list[Job]) -> None:
        publish_owed(self.store, self.publisher, jobs, self._clock)


def publish_owed(
    store: JobStore, publisher: Publisher, jobs: list[Job], clock: Callable[[], datetime] = utcnow
) -> None:
    """Publish each job (a retry keeps its back-off), then mark what was sent, even if the broker failed."""
    now = clock()
    sent: list[SentMessage] = []
    try:
        for job in jobs:
            publisher.publish(job, countdown=time_left(job, now))
            sent.append(SentMessage.of(job))
    finally:
        if sent:
            store.mark_published(sent, clock())


def time_left(job: Job, now: datetime) -> float | None:
    """A RETRYING job's remaining back-off, as a countdown for its message; None when it may run now."""
    if job.state is not JobState.RETRYING:
        return None
    return max(0.0, (job.scheduled_at - now).total_seconds()) or None


class Lease:
    """Who may act, held in Redis with a TTL (redis-py's Lock); the value names the holder for operators."""

    def __init__(self, client: redis.Redis, holder: str) -> None:
        self.holder = holder
        self._lock = Lock(client, LEASE_KEY, timeout=LEASE_SECONDS, blocking=False, thread_local=False)
        self.held = False

    def renew(self) -> bool:
        """Take the lease if it is free, or extend it if held; False if another holder has it."""
        try:
            if self.held:
                self._lock.reacquire()
            else:
                self.held = self._lock.acquire(token=self.holder)
        except LockError:
            self.held = False
        return self.held

    def release(self) -> None:
        if self.held:
            # Lost already, or Redis is down: either way the TTL ends it.
            with contextlib.suppress(LockError, RedisError):
                self._lock.release()
            self.held = False


def run_scheduler(scheduler: Scheduler, lease: Lease, stop: threading.Event) -> None:
    """Act while holding the lease, stand by otherwise, until `stop` is set; then hand the lease over."""
    was_active: bool | None = None
    try:
        while not stop.is_set():
            try:
                active = lease.renew()
            except RedisError as exc:
                log.warning("scheduler lease unavailable (Redis): %s", exc)
                active = lease.held = False
            if active != was_active:
                log.info("scheduler %s is %s", lease.holder, "active" if active else "standing by")
            was_active = active
            if active:
                try:
                    scheduler.run_pass()
                except (StoreUnavailable, BrokerUnavailable) as exc:
                    log.warning("scheduler pass failed, trying again: %s", exc)
            stop.wait(ACTIVE_POLL_SECONDS if active else STANDBY_POLL_SECONDS)
    finally:
        lease.release()


def main() -> None:
    """`taskapp scheduler`: run until SIGTERM or SIGINT."""
    from taskapp.app import app as celery_app
    from taskapp.config import get_settings
    from taskapp.log_format import setup_process_logging

    settings = get_settings()
    setup_process_logging(settings.log_format)
    store = open_store(settings.database_url, change_hooks=[ChangePublisher(settings.redis_url)])
    scheduler = Scheduler(store, CeleryPublisher(celery_app), retention=settings.retention)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    lease = Lease(client, holder=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("scheduler %s starting (retention %s)", lease.holder, settings.retention)
    run_scheduler(scheduler, lease, stop)
    log.info("scheduler %s stopped", lease.holder)

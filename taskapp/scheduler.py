"""The scheduler process: sends the messages SQL says are due or owed, rescues lost runs, heals a broker that
lost messages, and deletes what retention has expired.

Each pass it (0) fires the recurring schedules that are due (`taskapp.schedules`), (1) moves SCHEDULED jobs whose `run_at` has come to QUEUED and publishes them, (2) publishes the
messages owed: retries whose back-off has ended (ahead of the jobs waiting in their queue: they keep their
place in line), and jobs whose writer died between its commit and its publish (the outbox), (3) rescues RUNNING
jobs whose lease lapsed (their worker is gone or cut off, and has stopped the run): another attempt after a
back-off, or the dead letters, as `taskapp.policy` decides, (4) publishes again the jobs whose message a lost
worker took and never ran, and notices that Redis lost messages and publishes them again (`taskapp.reconcile`),
(5) lets out the jobs waiting in flow control's lines that their limits have room for (`taskapp.flow`), and
(6) deletes finished jobs older than `TASKAPP_RETENTION` in bounded batches. Far schedules and back-offs therefore live in SQL, never in the broker, where Redis would redeliver
them after the visibility timeout.

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

from taskapp import flow, policy
from taskapp.clock import utcnow
from taskapp.errors import BrokerUnavailable, StoreUnavailable
from taskapp.jobs import Job, JobState
from taskapp.notify import ChangePublisher
from taskapp.outcomes import end_failed_run
from taskapp.publisher import CeleryPublisher, Publisher
from taskapp.reconcile import BrokerLossWatch, OrphanWatch, publish_owed, reconcile
from taskapp.redis_target import redis_client
from taskapp.registry import load_handlers
from taskapp.schedules import ScheduleService
from taskapp.service import JobService
from taskapp.store.engine import open_store
from taskapp.store.port import JobStore

log = logging.getLogger(__name__)

LEASE_KEY = "taskapp:scheduler"
#: Since when some scheduler has been running without a gap (`RunningSince`).
RUNNING_SINCE_KEY = "taskapp:scheduler:running-since"
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


#: The `last_error` of a run whose lease lapsed.
LAPSED = "lease lapsed: the run's worker is gone or cut off from the job database"


@dataclass(frozen=True, slots=True)
class PassReport:
    fired: int
    promoted: int
    republished: int
    rescued: int
    orphans: int
    reconciled: int
    let_out: int
    purged: int


class Scheduler:
    """One pass of the scheduler's work at a time; the lease and the loop are `run_scheduler`'s."""

    def __init__(
        self,
        store: JobStore,
        publisher: Publisher,
        *,
        retention: timedelta,
        broker_watch: BrokerLossWatch | None = None,
        orphan_watch: OrphanWatch | None = None,
        schedules: ScheduleService | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.schedules = schedules
        #: Firings due before this (no scheduler of ours was running) are missed, not late; `run_scheduler`
        #: moves it back to when the first of the schedulers running now started (`RunningSince`).
        self.running_since = clock()
        self.publisher = publisher
        self.retention = retention
        self.broker_watch = broker_watch
        self.orphan_watch = orphan_watch
        self._clock = clock
        self._next_purge: datetime | None = None

    def run_pass(self) -> PassReport:
        return PassReport(
            fired=self.fire_schedules(),
            promoted=self.publish_due(),
            republished=self.publish_owed(),
            rescued=self.rescue_lapsed(),
            orphans=self.release_orphans(),
            reconciled=self.heal_broker(),
            let_out=self.let_out_lines(),
            purged=self.purge_expired(),
        )

    def fire_schedules(self) -> int:
        """The recurring schedules' due firings, each a job with an id of its own (`taskapp.schedules`)."""
        if self.schedules is None:
            return 0
        return self.schedules.fire_due(self.running_since)

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
        """Publish the retries whose back-off has ended, and what the outbox says was not sent in time."""
        now = self._clock()
        owed = self.store.owed(now, now - OUTBOX_GRACE, JOBS_PER_QUERY)
        unsent = sum(job.state is JobState.QUEUED for job in owed)
        if unsent:
            log.warning("publishing %d job(s) whose message was never sent", unsent)
        self._publish(owed)
        return len(owed)

    def rescue_lapsed(self) -> int:
        """End each run whose lease lapsed as a lost attempt: RETRYING after its back-off (published by a later
        pass), or DEAD_LETTER. Guarded on the lease still being lapsed, so a run renewed meanwhile goes on."""
        now = self._clock()
        lost = policy.Failure.WORKER_LOST
        rescued = [
            run
            for run in self.store.lapsed_runs(now, JOBS_PER_QUERY)
            if end_failed_run(self.store, self.publisher, run, lost, LAPSED, lapsed=True, now=now)
        ]
        if rescued:
            log.warning("rescued %d job(s) whose run lost its lease: %s", len(rescued), _some(rescued))
        return len(rescued)

    def release_orphans(self) -> int:
        """Publish again each job whose message a worker took a lease ago and never claimed (`OrphanWatch`)."""
        if self.orphan_watch is None:
            return 0
        orphans = self.orphan_watch.release(self.store, self.publisher)
        if orphans:
            log.warning(
                "published again %d job(s) whose message a lost worker took and never ran: %s",
                len(orphans),
                _some(orphans),
            )
        return len(orphans)

    def heal_broker(self) -> int:
        """If Redis lost messages, publish again every job that wants a run and has none."""
        if self.broker_watch is None or (loss := self.broker_watch.loss()) is None:
            return 0
        log.warning("the broker lost messages (%s): publishing again what it no longer holds", loss.reason)
        client = self.broker_watch.client
        return reconcile(self.store, self.publisher, client, unmarked=loss.certain).republished

    def let_out_lines(self) -> int:
        """The jobs waiting in flow control's lines that their limits have room for (`taskapp.flow`): a run's
        worker lets the next one out as the run ends, unless it died first, or the run was cancelled."""
        return flow.let_out_everywhere(self.store, self.publisher, self._clock)

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


def _some(jobs: list[Job], shown: int = 5) -> str:
    """A few job ids for a log line."""
    ids = ", ".join(job.job_id for job in jobs[:shown])
    return ids if len(jobs) <= shown else f"{ids} and {len(jobs) - shown} more"


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


class RunningSince:
    """Since when a scheduler of ours has been running without a gap: a key in Redis that every scheduler,
    active or standing by, renews each turn, and that lapses when none has for a lease. A firing due since then
    is late, not missed, whichever scheduler fires it: the one restarted after a kill may take the lease from a
    standby that ran all along, and must fire what fell due while it was down."""

    def __init__(self, client: redis.Redis, started: datetime, ttl: float = LEASE_SECONDS) -> None:
        self.started = started
        self._client = client
        self._ttl_ms = int(ttl * 1000)

    def renew(self) -> datetime:
        """Say this scheduler runs; the earliest start of those running since, this one's at the latest (the
        key is gone after a Redis restart, not the time this process has run)."""
        pipe = self._client.pipeline()
        pipe.set(RUNNING_SINCE_KEY, self.started.isoformat(), nx=True, px=self._ttl_ms)
        pipe.pexpire(RUNNING_SINCE_KEY, self._ttl_ms)
        pipe.get(RUNNING_SINCE_KEY)
        value = pipe.execute()[-1]
        since = datetime.fromisoformat(value.decode() if isinstance(value, bytes) else value)
        return min(since, self.started)


def run_scheduler(
    scheduler: Scheduler, lease: Lease, stop: threading.Event, running: RunningSince | None = None
) -> None:
    """Act while holding the lease, stand by otherwise, until `stop` is set; then hand the lease over."""
    was_active: bool | None = None
    #: One warning when passes start failing (a database or broker outage), one when they work again.
    failing: Exception | None = None
    try:
        while not stop.is_set():
            try:
                if running is not None:
                    scheduler.running_since = running.renew()
                active = lease.renew()
            except RedisError as exc:
                log.warning("scheduler lease unavailable (Redis): %s", exc)
                active = lease.held = False
            if active != was_active:
                log.info(
                    "scheduler %s is %s",
                    lease.holder,
                    f"active (schedule firings due before {scheduler.running_since.isoformat()} are missed)"
                    if active
                    else "standing by",
                )
            was_active = active
            if active:
                try:
                    scheduler.run_pass()
                except (StoreUnavailable, BrokerUnavailable, RedisError) as exc:
                    if failing is None:
                        log.warning(
                            "scheduler passes fail, trying again every %.2f s: %s", ACTIVE_POLL_SECONDS, exc
                        )
                    failing = exc
                else:
                    if failing is not None:
                        log.warning("scheduler passes succeed again")
                    failing = None
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
    client = redis_client(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    publisher = CeleryPublisher(celery_app)
    jobs = JobService(store, publisher, load_handlers(settings.handler_modules))
    scheduler = Scheduler(
        store,
        publisher,
        retention=settings.retention,
        broker_watch=BrokerLossWatch(client, store),
        orphan_watch=OrphanWatch(client, after=settings.lease_seconds),
        schedules=ScheduleService(store, jobs.submit, jobs.validate),
    )
    lease = Lease(client, holder=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("scheduler %s starting (retention %s)", lease.holder, settings.retention)
    run_scheduler(scheduler, lease, stop, RunningSince(client, scheduler.running_since))
    log.info("scheduler %s stopped", lease.holder)

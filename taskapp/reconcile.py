"""After the broker lost messages, send again every message SQL says should be there; and notice the loss.

Redis keeps its queues in memory; a restart without persistence, a failover or a FLUSHDB loses them while SQL
still says QUEUED. `reconcile` reads which jobs the broker holds a message for (every priority queue, with the
Redis transport's priority sub-lists, and the messages workers took and have not acknowledged, if taken
recently: an older one belongs to a worker that is gone) and publishes every job that wants a run and has
none. A message that was in flight while this ran may end up doubled, which is harmless: the claim lets only
one delivery run the job.

`BrokerLossWatch` lets the active scheduler notice a loss by itself: a marker key it keeps in Redis is gone, or
Redis holds fewer waiting messages than SQL says should wait, two sweeps in a row. `taskapp reconcile` stays
for manual use.

`OrphanWatch` finds the messages a worker took and never claimed a run for: the worker is gone (a host lost
with a message it had just taken). Redis would hand such a message out again only after the visibility
timeout, a day later; the scheduler publishes the job again once the message is a lease old.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis

from taskapp.clock import utcnow
from taskapp.jobs import Job, JobState, SentMessage, wants_a_run
from taskapp.publisher import Publisher
from taskapp.routing import PRIORITY_QUEUES, RUN_SEPARATOR, broker_keys, job_id_of
from taskapp.store.port import JobStore

log = logging.getLogger(__name__)

#: Where kombu's Redis transport keeps a delivered message until its worker acknowledges it, and when each
#: was delivered.
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
#: An unacknowledged message older than this, for a job that still waits to be claimed, is not a live one: a
#: live worker claims what it takes within moments.
STALE_UNACKED = timedelta(seconds=60)
#: Messages read from a broker list per command.
MESSAGES_PER_READ = 1_000
#: Jobs read from SQL per query.
JOBS_PER_PAGE = 1_000
#: The key whose absence tells that Redis lost its data.
MARKER_KEY = "taskapp:broker-marker"
#: How often the counts of waiting messages are compared, and how long a job published must wait before it
#: counts (so that a message on its way is not taken for a lost one).
SWEEP_EVERY = timedelta(seconds=5)
SETTLE = timedelta(seconds=10)


@dataclass(frozen=True, slots=True)
class BrokerLoss:
    """Why the broker must be reconciled, and whether a loss is certain: a marker this scheduler had seen is
    gone, or Redis holds fewer messages than SQL says. A marker missing at first sight may only be a new Redis,
    while the jobs just submitted still have their messages on the way."""

    reason: str
    certain: bool


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    in_broker: int
    checked: int
    republished: int


def _task_id(message: object) -> str | None:
    if isinstance(message, dict):
        task_id = message.get("headers", {}).get("id")
        return task_id if isinstance(task_id, str) else None
    return None


def _job_id(message: object) -> str | None:
    task_id = _task_id(message)
    return job_id_of(task_id) if task_id is not None else None


def job_ids_in_broker(client: redis.Redis, now: float | None = None) -> set[str]:
    """Ids of the jobs with a message in a priority queue, or taken by a worker within `STALE_UNACKED`."""
    now = time.time() if now is None else now
    found: set[str] = set()
    for key in [key for queue in PRIORITY_QUEUES for key in broker_keys(queue)]:
        for start in range(0, int(client.llen(key)), MESSAGES_PER_READ):
            for raw in client.lrange(key, start, start + MESSAGES_PER_READ - 1):
                if job_id := _job_id(json.loads(raw)):
                    found.add(job_id)
    taken_at: dict[bytes, float] = dict(client.zrange(UNACKED_INDEX_KEY, 0, -1, withscores=True))  # type: ignore[arg-type]
    for tag, raw in client.hscan_iter(UNACKED_KEY, count=MESSAGES_PER_READ):
        if now - taken_at.get(tag, 0.0) > STALE_UNACKED.total_seconds():
            continue
        # Each entry is [message, exchange, routing_key].
        entry = json.loads(raw)
        if isinstance(entry, list) and entry and (job_id := _job_id(entry[0])):
            found.add(job_id)
    return found


def publish_owed(
    store: JobStore, publisher: Publisher, jobs: list[Job], clock: Callable[[], datetime] = utcnow
) -> None:
    """Publish jobs that want a run now, then mark them published. A retry goes ahead of what waits in its
    queue: it had its place in line once already."""
    if not jobs:
        return
    retries = [job for job in jobs if job.state is JobState.RETRYING]
    firsts = [job for job in jobs if job.state is not JobState.RETRYING]
    publisher.publish_many(firsts)
    publisher.publish_many(retries, at_front=True)
    store.mark_published([SentMessage.of(job) for job in jobs], clock())


def reconcile(
    store: JobStore, publisher: Publisher, client: redis.Redis, unmarked: bool = True
) -> ReconcileReport:
    """Publish every job that wants a run, was published before the broker was read, and has no message there.
    With `unmarked`, also the jobs written before then whose published mark is still on its way: a loss may
    have taken their messages before the mark landed (a job whose writer publishes it while this runs is
    doubled; one claim wins). Without, they are left to their writer, or the outbox."""
    read_from = utcnow()
    in_broker = job_ids_in_broker(client)
    checked = republished = 0
    after_seq = 0
    written_before = read_from if unmarked else datetime.min.replace(tzinfo=UTC)
    while jobs := store.awaiting_run(utcnow(), read_from, written_before, after_seq, JOBS_PER_PAGE):
        after_seq = jobs[-1].seq
        checked += len(jobs)
        missing = [job for job in jobs if job.job_id not in in_broker]
        publish_owed(store, publisher, missing)
        republished += len(missing)
    log.info("reconcile: %d job(s) want a run, %d had no message and were published", checked, republished)
    return ReconcileReport(in_broker=len(in_broker), checked=checked, republished=republished)


class BrokerLossWatch:
    """Tells the active scheduler when Redis has lost messages. Checked every pass: the marker costs one GET; the
    counts, one pipeline and one SQL count every `SWEEP_EVERY`."""

    def __init__(self, client: redis.Redis, store: JobStore, clock: Callable[[], datetime] = utcnow) -> None:
        self.client = client
        self.store = store
        self._clock = clock
        self._marker: bytes | None = None
        self._next_sweep: datetime | None = None
        self._short_before = False

    def loss(self) -> BrokerLoss | None:
        """Why the broker must be reconciled now, or None. A missing marker is taken for a loss even on the
        first look, when it may only be a new Redis: reconciling costs little when nothing waits."""
        marker = self.client.get(MARKER_KEY)
        if marker is None:
            seen = self._marker is not None
            self.client.set(MARKER_KEY, uuid.uuid4().hex, nx=True)
            self._marker = self.client.get(MARKER_KEY)  # type: ignore[assignment]
            return BrokerLoss(
                "its marker is missing: a new Redis, or one that lost its data (a restart without it, a "
                "failover, a flush)",
                certain=seen,
            )
        if self._marker is not None and marker != self._marker:
            self._marker = marker  # type: ignore[assignment]
            return BrokerLoss("its marker changed: another scheduler saw it gone", certain=True)
        self._marker = marker  # type: ignore[assignment]
        return self._sweep()

    def _sweep(self) -> BrokerLoss | None:
        now = self._clock()
        if self._next_sweep is not None and now < self._next_sweep:
            return None
        self._next_sweep = now + SWEEP_EVERY
        pipeline = self.client.pipeline(transaction=False)
        for key in [key for queue in PRIORITY_QUEUES for key in broker_keys(queue)]:
            pipeline.llen(key)
        pipeline.hlen(UNACKED_KEY)
        *lengths, unacked = pipeline.execute()
        # SQL is read after the broker, so a job that moves on in between is counted where it went.
        waiting, running = self.store.expected_messages(now, now - SETTLE)
        taken_not_running = max(0, int(unacked) - running)
        missing = waiting - sum(lengths) - taken_not_running
        short_twice = missing > 0 and self._short_before
        self._short_before = missing > 0
        if short_twice:
            return BrokerLoss(f"it holds at least {missing} fewer waiting message(s) than SQL expects", True)
        return None


class OrphanWatch:
    """Publishes again the jobs whose message a worker took `after` seconds ago or more and never claimed.

    A live worker claims what it takes within moments (prefetch 1: it takes a message only for a free pool
    process); a run it claimed is the lease's to rescue. So a message a lease old whose run is still unclaimed
    belongs to a worker that is gone. Its entry in Redis' unacknowledged messages is dropped with the new
    publish, so that the visibility timeout does not hand it out a second time; should its worker be alive
    after all (stalled, or waiting for the database), the duplicate is harmless: one claim wins.

    Each message is looked at once, when it comes of age: a run, once claimed, never waits for its message
    again. A RETRYING job not yet due may have a message held back on purpose (a delivery that came early is
    put off with a countdown): it is left alone. Messages are dated by the clock of the worker that took them.
    """

    def __init__(self, client: redis.Redis, after: float) -> None:
        self.client = client
        self.after = after
        self._looked_until = float("-inf")

    def release(self, store: JobStore, publisher: Publisher, now: float | None = None) -> list[Job]:
        now = time.time() if now is None else now
        until = now - self.after
        taken: list[bytes] = self.client.zrangebyscore(  # type: ignore[assignment]
            UNACKED_INDEX_KEY, f"({self._looked_until}", until
        )
        due_by = datetime.fromtimestamp(until, UTC)
        orphans: dict[bytes, Job] = {}
        if taken:
            for tag, raw in zip(taken, self.client.hmget(UNACKED_KEY, taken), strict=True):
                entry = json.loads(raw) if raw is not None else None
                task_id = _task_id(entry[0]) if isinstance(entry, list) and entry else None
                if task_id is None:
                    continue
                job_id, _, run = task_id.rpartition(RUN_SEPARATOR)
                job = store.get(job_id)
                if (
                    job is not None
                    and run.isdigit()
                    and job.runs + 1 == int(run)
                    and wants_a_run(job.state, job.scheduled_at, due_by)
                ):
                    orphans[tag] = job
        if orphans:
            publish_owed(store, publisher, list(orphans.values()))
            pipeline = self.client.pipeline(transaction=False)
            pipeline.hdel(UNACKED_KEY, *orphans)
            pipeline.zrem(UNACKED_INDEX_KEY, *orphans)
            pipeline.execute()
        self._looked_until = until
        return list(orphans.values())

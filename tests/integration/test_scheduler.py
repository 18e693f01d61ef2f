"""The scheduler's passes and its lease against real SQL (SQLite and PostgreSQL) and a real Redis, on a clock
the test moves."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import redis
from celery import Celery

from taskapp import scheduler as scheduler_module
from taskapp.clock import utcnow
from taskapp.jobs import JobState, SentMessage
from taskapp.publisher import CeleryPublisher
from taskapp.reconcile import (
    MARKER_KEY,
    SETTLE,
    SWEEP_EVERY,
    BrokerLossWatch,
    OrphanWatch,
    publish_owed,
    reconcile,
)
from taskapp.scheduler import LAPSED, OUTBOX_GRACE, RUNNING_SINCE_KEY, Lease, RunningSince, Scheduler
from taskapp.store.engine import open_store
from taskapp.store.sql import SqlJobStore
from tests.helpers import create, new_job, wait_for

T0 = utcnow()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(database_url: str) -> Iterator[SqlJobStore]:
    store = open_store(database_url)
    yield store
    store.engine.dispose()


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def scheduler(store: SqlJobStore, redis_url: str, clock: Clock) -> Scheduler:
    publisher = CeleryPublisher(Celery("scheduler-test", broker=redis_url))
    return Scheduler(store, publisher, retention=timedelta(days=7), clock=clock)


def messages(client: redis.Redis, queue: str = "default") -> list[dict]:
    return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]


def test_a_scheduled_job_is_published_when_due_and_not_before(
    scheduler: Scheduler, store: SqlJobStore, client: redis.Redis, clock: Clock
) -> None:
    job, _ = create(store, new_job("later", run_at=T0 + timedelta(seconds=10)), T0)
    assert (job.state, job.scheduled_at) == (JobState.SCHEDULED, T0 + timedelta(seconds=10))

    clock.now = T0 + timedelta(seconds=9.9)
    assert scheduler.run_pass().promoted == 0
    assert messages(client) == []

    clock.now = T0 + timedelta(seconds=10)
    assert scheduler.run_pass().promoted == 1
    assert [m["headers"]["id"] for m in messages(client)] == ["later@1"]
    promoted = store.get("later")
    assert promoted is not None and promoted.state is JobState.QUEUED and promoted.published_at == clock.now
    assert scheduler.run_pass().promoted == 0, "promoted once"


def test_owed_messages_are_sent_after_the_grace_period(
    scheduler: Scheduler, store: SqlJobStore, client: redis.Redis, clock: Clock
) -> None:
    create(store, new_job("orphan"), T0)  # committed; its writer died before publishing
    clock.now = T0 + OUTBOX_GRACE - timedelta(milliseconds=1)
    assert scheduler.run_pass().republished == 0

    clock.now = T0 + OUTBOX_GRACE + timedelta(milliseconds=1)
    assert scheduler.run_pass().republished == 1
    assert [m["headers"]["id"] for m in messages(client)] == ["orphan@1"]
    assert scheduler.run_pass().republished == 0, "marked published"


def test_a_retry_is_published_when_its_back_off_ends_ahead_of_the_waiting_jobs(
    scheduler: Scheduler, store: SqlJobStore, client: redis.Redis, clock: Clock
) -> None:
    waiting = [create(store, new_job(f"waiting-{n}"), T0)[0] for n in range(3)]
    publish_owed(store, scheduler.publisher, waiting)
    create(store, new_job("retry"), T0)
    store.claim("retry", "w", T0, 60, "retry@1")
    retry_at = T0 + timedelta(seconds=30)
    assert store.fail_run("retry", 1, JobState.RETRYING, "boom", T0, retry_at=retry_at)

    clock.now = retry_at - timedelta(milliseconds=1)
    assert scheduler.run_pass().republished == 0, "still backing off"
    clock.now = retry_at
    assert scheduler.run_pass().republished == 1
    # Workers take from the tail of the list: the retry is next, then the jobs that waited before it.
    in_line = [m["headers"]["id"] for m in reversed(messages(client))]
    assert in_line == ["retry@2", "waiting-0@1", "waiting-1@1", "waiting-2@1"]
    assert messages(client)[-1]["headers"].get("eta") is None, "due now: no countdown"
    assert scheduler.run_pass().republished == 0, "marked published"


def test_a_run_that_lost_its_lease_is_rescued_once_it_has_lapsed(
    scheduler: Scheduler, store: SqlJobStore, client: redis.Redis, clock: Clock
) -> None:
    create(store, new_job("lost"), T0)
    store.claim("lost", "w", T0, 30, "lost@1")
    clock.now = T0 + timedelta(seconds=29)
    assert scheduler.run_pass().rescued == 0, "the lease is live"
    clock.now = T0 + timedelta(seconds=31)
    assert scheduler.run_pass().rescued == 1
    job = store.get("lost")
    assert job is not None and (job.state, job.last_error, job.published_at) == (
        JobState.RETRYING,
        LAPSED,
        None,
    )
    back_off = (job.scheduled_at - clock.now).total_seconds()
    assert 1.0 <= back_off <= 1.25, "the first back-off, stretched by up to a quarter"
    assert scheduler.run_pass().rescued == 0, "rescued once"
    clock.now = job.scheduled_at
    assert scheduler.run_pass().republished == 1
    assert [m["headers"]["id"] for m in messages(client)] == ["lost@2"]


def test_a_lapsed_last_attempt_ends_in_the_dead_letters(
    scheduler: Scheduler, store: SqlJobStore, client: redis.Redis, clock: Clock
) -> None:
    create(store, dataclasses.replace(new_job("last"), max_attempts=1), T0)
    store.claim("last", "w", T0, 30, "last@1")
    clock.now = T0 + timedelta(seconds=31)
    assert scheduler.run_pass().rescued == 1
    job = store.get("last")
    assert job is not None and job.state is JobState.DEAD_LETTER
    assert [m["headers"]["id"] for m in messages(client, "dead_letter")] == ["last@1"]


def queued_and_published(store: SqlJobStore, scheduler: Scheduler, count: int) -> list[str]:
    jobs = [create(store, new_job(f"job-{n}"), T0)[0] for n in range(count)]
    publish_owed(store, scheduler.publisher, jobs, lambda: T0)
    return [job.job_id for job in jobs]


def test_a_broker_that_lost_its_data_is_reconciled_at_once(
    store: SqlJobStore, client: redis.Redis, clock: Clock, redis_url: str
) -> None:
    scheduler = watching_scheduler(store, client, clock, redis_url)
    queued_and_published(store, scheduler, 5)
    assert scheduler.run_pass().reconciled == 0, "first look: the marker is set, every message is there"
    assert client.get(MARKER_KEY) is not None
    assert scheduler.run_pass().reconciled == 0
    client.flushdb()
    assert scheduler.run_pass().reconciled == 5
    assert sorted(m["headers"]["id"] for m in messages(client)) == [f"job-{n}@1" for n in range(5)]
    assert scheduler.run_pass().reconciled == 0


def test_a_job_the_broker_lost_before_its_published_mark_landed_is_reconciled(
    store: SqlJobStore, client: redis.Redis, clock: Clock, redis_url: str
) -> None:
    scheduler = watching_scheduler(store, client, clock, redis_url)
    assert scheduler.run_pass().reconciled == 0, "first look: the marker is set"
    job, _ = create(store, new_job("unmarked"), T0)
    scheduler.publisher.publish_many([job])  # the gateway published it; its batched mark has not landed yet
    client.flushdb()
    assert clock.now < T0 + OUTBOX_GRACE, "not the outbox's yet"
    assert scheduler.run_pass().reconciled == 1
    assert [m["headers"]["id"] for m in messages(client)] == ["unmarked@1"]
    assert scheduler.run_pass().reconciled == 0


def test_a_new_redis_at_first_sight_does_not_double_the_messages_on_their_way(
    store: SqlJobStore, client: redis.Redis, clock: Clock, redis_url: str
) -> None:
    scheduler = watching_scheduler(store, client, clock, redis_url)
    job, _ = create(store, new_job("on-its-way"), T0)
    scheduler.publisher.publish_many([job])  # the gateway published it; its batched mark has not landed yet
    assert scheduler.run_pass().reconciled == 0, "no marker yet: maybe a new Redis, not a lost one"
    assert [m["headers"]["id"] for m in messages(client)] == ["on-its-way@1"]


def test_a_broker_short_of_messages_twice_in_a_row_is_reconciled(
    store: SqlJobStore, client: redis.Redis, clock: Clock, redis_url: str
) -> None:
    scheduler = watching_scheduler(store, client, clock, redis_url)
    queued_and_published(store, scheduler, 5)
    clock.now = T0 + SETTLE + timedelta(seconds=1)
    assert scheduler.run_pass().reconciled == 0
    client.rpop("default", 2)  # a failover lost the last two writes, say
    clock.now += SWEEP_EVERY
    assert scheduler.run_pass().reconciled == 0, "once short may be a message on its way"
    clock.now += SWEEP_EVERY
    assert scheduler.run_pass().reconciled == 2
    assert len(messages(client)) == 5


def test_reconcile_takes_an_old_unacknowledged_message_for_a_lost_one(
    store: SqlJobStore, client: redis.Redis, redis_url: str
) -> None:
    publisher = CeleryPublisher(Celery("reconcile-test", broker=redis_url))
    jobs = [create(store, new_job(job_id), T0)[0] for job_id in ("fresh", "stale")]
    publisher.publish_many(jobs)
    store.mark_published([SentMessage.of(job) for job in jobs], T0)
    # Both taken by workers, as kombu records it; the one taken long ago belongs to a worker that is gone.
    for age in (1, 600):
        message = messages(client)[-1]
        client.rpop("default")
        tag = message["properties"]["delivery_tag"]
        client.hset("unacked", tag, json.dumps([message, "", "default"]))
        client.zadd("unacked_index", {tag: time.time() - age})
    report = reconcile(store, publisher, client)
    assert report.republished == 1
    assert [m["headers"]["id"] for m in messages(client)] == ["stale@1"]


def take(client: redis.Redis, age: float) -> None:
    """The last waiting message taken by a worker `age` seconds ago, as kombu records it."""
    message = messages(client)[-1]
    client.rpop("default")
    tag = message["properties"]["delivery_tag"]
    client.hset("unacked", tag, json.dumps([message, "", "default"]))
    client.zadd("unacked_index", {tag: time.time() - age})


def test_a_message_taken_a_lease_ago_for_a_run_never_claimed_is_published_again_once(
    store: SqlJobStore, client: redis.Redis, redis_url: str
) -> None:
    publisher = CeleryPublisher(Celery("orphan-test", broker=redis_url))
    names = ("orphan", "claimed", "released", "fresh")
    jobs = [create(store, new_job(job_id), T0)[0] for job_id in names]
    publisher.publish_many(jobs)
    store.mark_published([SentMessage.of(job) for job in jobs], T0)
    for age in (60, 60, 60, 1):  # taken in the order of `names`
        take(client, age)
    store.claim("claimed", "worker-a", utcnow(), 30, "claimed@1")  # running: its lease's to rescue
    store.claim("released", "worker-a", utcnow(), 30, "released@1")
    assert store.release("released", "worker-a", utcnow()), "its worker gives it back, with its message"
    watch = OrphanWatch(client, after=30)

    assert [job.job_id for job in watch.release(store, publisher)] == ["orphan"]
    assert [m["headers"]["id"] for m in messages(client)] == ["orphan@1"]
    left = {json.loads(raw)[0]["headers"]["id"] for raw in client.hvals("unacked")}
    assert left == {"claimed@1", "released@1", "fresh@1"}, "the lost worker's copy is forgotten, no other"
    assert client.zcard("unacked_index") == 3
    assert watch.release(store, publisher) == [], "each message is looked at once"
    assert len(messages(client)) == 1


def watching_scheduler(store: SqlJobStore, client: redis.Redis, clock: Clock, redis_url: str) -> Scheduler:
    publisher = CeleryPublisher(Celery("scheduler-test", broker=redis_url))
    watch = BrokerLossWatch(client, store, clock)
    return Scheduler(store, publisher, retention=timedelta(days=7), broker_watch=watch, clock=clock)


def test_retention_deletes_finished_jobs_in_batches_and_nothing_else(
    scheduler: Scheduler, store: SqlJobStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_module, "JOBS_PER_PURGE", 2)
    for n in range(5):
        create(store, new_job(f"old-{n}"), T0)
        store.cancel(f"old-{n}", T0)
    create(store, new_job("queued-long-ago"), T0)
    store.mark_published([SentMessage("queued-long-ago", JobState.QUEUED, 0)], T0)
    clock.now = T0 + timedelta(days=7, seconds=1)
    create(store, new_job("recent"), clock.now)
    store.cancel("recent", clock.now)

    assert [scheduler.purge_expired() for _ in range(4)] == [2, 2, 1, 0]
    assert all(store.get(f"old-{n}") is None for n in range(5))
    assert store.get("queued-long-ago") is not None
    assert store.get("recent") is not None


def test_one_lease_holder_at_a_time(client: redis.Redis) -> None:
    first, second = Lease(client, "host:1:a"), Lease(client, "host:2:b")
    assert first.renew() and not second.renew()
    assert first.renew(), "the holder extends it"
    assert client.get("taskapp:scheduler") == b"host:1:a"
    first.release()
    assert second.renew() and not first.renew()


def test_schedulers_running_since_is_the_first_start_until_none_has_run_for_a_lease(
    client: redis.Redis,
) -> None:
    ttl = 0.3
    standby = RunningSince(client, T0, ttl)
    assert standby.renew() == T0
    # The active one, killed and started again while the standby ran: firings since T0 are late, not missed.
    restarted = RunningSince(client, T0 + timedelta(seconds=5), ttl)
    assert restarted.renew() == T0
    assert standby.renew() == T0
    # Every scheduler stopped for longer than the lease: the next one runs since its own start.
    wait_for(lambda: not client.exists(RUNNING_SINCE_KEY), 5, "the key to lapse")
    later = RunningSince(client, T0 + timedelta(seconds=60), ttl)
    assert later.renew() == T0 + timedelta(seconds=60)
    # A Redis that lost the key does not make a scheduler's own run any shorter.
    client.delete(RUNNING_SINCE_KEY)
    assert standby.renew() == T0
    assert later.renew() == T0

"""The scheduler's passes and its lease against real SQL (SQLite and PostgreSQL) and a real Redis, on a clock
the test moves."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import redis
from celery import Celery

from taskapp import scheduler as scheduler_module
from taskapp.clock import utcnow
from taskapp.jobs import JobState, SentMessage
from taskapp.publisher import CeleryPublisher
from taskapp.scheduler import OUTBOX_GRACE, Lease, Scheduler
from taskapp.store.engine import open_store
from taskapp.store.sql import SqlJobStore
from tests.helpers import create, new_job

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
    assert [m["headers"]["id"] for m in messages(client)] == ["later"]
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
    assert [m["headers"]["id"] for m in messages(client)] == ["orphan"]
    assert scheduler.run_pass().republished == 0, "marked published"


def test_an_owed_retry_keeps_its_back_off(
    scheduler: Scheduler, store: SqlJobStore, client: redis.Redis, clock: Clock
) -> None:
    create(store, new_job("retry"), T0)
    store.claim("retry", "w", T0, 60)
    retry_at = T0 + timedelta(seconds=30)
    assert store.fail_run("retry", 1, JobState.RETRYING, "boom", T0, retry_at=retry_at)

    clock.now = T0 + timedelta(seconds=6)
    published = utcnow()
    assert scheduler.run_pass().republished == 1
    [message] = messages(client)
    # Celery counts the countdown from its own clock: 24 s of back-off are left on the scheduler's.
    eta = datetime.fromisoformat(message["headers"]["eta"])
    assert abs((eta - (published + timedelta(seconds=24))).total_seconds()) < 1


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

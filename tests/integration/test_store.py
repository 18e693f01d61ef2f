"""SqlJobStore against real databases: the same body on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import sqlalchemy as sa

from taskapp.jobs import JobFilter, JobState, NewJob, Priority
from taskapp.store import SqlJobStore, events_table, utcnow


def new_job(job_id: str, *, type: str = "echo", priority: Priority = Priority.DEFAULT) -> NewJob:
    return NewJob(
        job_id=job_id,
        type=type,
        priority=priority,
        payload={"n": 1, "nested": {"list": [1, "two", None]}},
        max_attempts=3,
        timeout_seconds=300,
        fingerprint=hashlib.sha256(job_id.encode()).hexdigest(),
    )


@pytest.fixture
def store(database_url: str) -> SqlJobStore:
    store = SqlJobStore.from_url(database_url)
    yield store
    store.engine.dispose()


def event_states(store: SqlJobStore, job_id: str) -> list[str]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(events_table.c.state)
            .where(events_table.c.job_id == job_id)
            .order_by(events_table.c.seq)
        )
        return [row.state for row in rows]


def test_create_get_round_trip(store: SqlJobStore) -> None:
    job, created = store.create(new_job("a"), utcnow())
    assert created
    fetched = store.get("a")
    assert fetched == job
    assert fetched.payload == {"n": 1, "nested": {"list": [1, "two", None]}}
    assert fetched.created_at.tzinfo is not None
    assert fetched.result is None


def test_create_twice_returns_the_existing_row(store: SqlJobStore) -> None:
    first, _ = store.create(new_job("a"), utcnow())
    second, created = store.create(new_job("a", type="noop"), utcnow())
    assert not created
    assert second.type == "echo" and second.seq == first.seq


def test_claim_run_succeed(store: SqlJobStore) -> None:
    store.create(new_job("a"), utcnow())
    claimed = store.claim("a", "celery@w1", utcnow(), 30)
    assert claimed is not None
    assert (claimed.state, claimed.attempts, claimed.worker) == (JobState.RUNNING, 1, "celery@w1")
    assert claimed.started_at is not None
    assert store.claim("a", "celery@w2", utcnow(), 30) is None, "a running job is claimed once"
    assert store.succeed("a", 1, {"ok": [1, 2]}, utcnow())
    done = store.get("a")
    assert done.state is JobState.SUCCEEDED and done.result == {"ok": [1, 2]}
    assert done.finished_at is not None and done.finished_at >= done.started_at
    assert event_states(store, "a") == ["QUEUED", "RUNNING", "SUCCEEDED"]


def test_late_or_duplicate_outcomes_never_move_a_job_backwards(store: SqlJobStore) -> None:
    store.create(new_job("a"), utcnow())
    store.claim("a", "w", utcnow(), 30)
    assert not store.fail_run("a", 2, "wrong attempt", utcnow(), retry_at=None)
    assert store.fail_run("a", 1, "boom", utcnow(), retry_at=None) is JobState.FAILED
    assert not store.succeed("a", 1, None, utcnow())
    assert store.fail_run("a", None, "late", utcnow(), retry_at=None) is None
    assert store.claim("a", "w", utcnow(), 30) is None
    job = store.get("a")
    assert (job.state, job.last_error) == (JobState.FAILED, "boom")


def test_cancel_from_each_state(store: SqlJobStore) -> None:
    store.create(new_job("queued"), utcnow())
    store.create(new_job("running"), utcnow())
    store.create(new_job("done"), utcnow())
    store.claim("running", "w", utcnow(), 30)
    store.claim("done", "w", utcnow(), 30)
    store.succeed("done", 1, None, utcnow())

    queued = store.cancel("queued", utcnow())
    assert queued.cancelled and queued.previous_state is JobState.QUEUED
    running = store.cancel("running", utcnow())
    assert running.cancelled and running.previous_state is JobState.RUNNING
    done = store.cancel("done", utcnow())
    assert not done.cancelled and done.state is JobState.SUCCEEDED
    assert store.cancel("missing", utcnow()) is None
    assert store.claim("queued", "w", utcnow(), 30) is None
    assert not store.succeed("running", 1, None, utcnow())
    assert store.get("running").state is JobState.CANCELLED


def test_discard_removes_only_an_unstarted_job(store: SqlJobStore) -> None:
    store.create(new_job("a"), utcnow())
    store.create(new_job("b"), utcnow())
    store.claim("b", "w", utcnow(), 30)
    store.discard("a")
    store.discard("b")
    assert store.get("a") is None and event_states(store, "a") == []
    assert store.get("b") is not None


def test_list_filters_and_keyset_pages(store: SqlJobStore) -> None:
    for i in range(30):
        store.create(
            new_job(f"j{i:02}", type="echo" if i % 2 else "noop", priority=list(Priority)[i % 4]),
            utcnow(),
        )
    store.cancel("j05", utcnow())
    everything = store.list(JobFilter(), 100, None)
    assert [j.job_id for j in everything] == [f"j{i:02}" for i in reversed(range(30))]
    assert {j.job_id for j in store.list(JobFilter(type="echo"), 100, None)} == {
        f"j{i:02}" for i in range(30) if i % 2
    }
    assert [j.job_id for j in store.list(JobFilter(state=JobState.CANCELLED), 100, None)] == ["j05"]
    critical = store.list(JobFilter(priority=Priority.CRITICAL), 100, None)
    assert {j.job_id for j in critical} == {f"j{i:02}" for i in range(0, 30, 4)}
    first = store.list(JobFilter(), 10, None)
    second = store.list(JobFilter(), 10, first[-1].seq)
    assert [j.job_id for j in second] == [f"j{i:02}" for i in reversed(range(10, 20))]


def test_concurrent_claims_of_one_job_have_one_winner(store: SqlJobStore) -> None:
    store.create(new_job("hot"), utcnow())
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda i: store.claim("hot", f"w{i}", utcnow(), 30), range(64)))
    assert sum(r is not None for r in results) == 1
    assert store.get("hot").attempts == 1


def test_concurrent_creates_of_one_id_make_one_row(store: SqlJobStore) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda _: store.create(new_job("same"), utcnow()), range(100)))
    assert sum(created for _, created in results) == 1
    assert len({job.seq for job, _ in results}) == 1
    assert event_states(store, "same") == ["QUEUED"]


def test_retryable_failures_retry_then_dead_letter(store: SqlJobStore) -> None:
    store.create(new_job("r"), utcnow())  # max_attempts 3
    for attempt in (1, 2):
        assert store.claim("r", "w", utcnow(), 30).attempts == attempt
        retry_at = utcnow() + timedelta(seconds=attempt)
        assert (
            store.fail_run("r", attempt, f"err {attempt}", utcnow(), retry_at=retry_at) is JobState.RETRYING
        )
        job = store.get("r")
        assert (job.state, job.last_error, job.finished_at) == (JobState.RETRYING, f"err {attempt}", None)
        assert abs((job.scheduled_at - retry_at).total_seconds()) < 0.001
    store.claim("r", "w", utcnow(), 30)
    assert store.fail_run("r", 3, "err 3", utcnow(), retry_at=utcnow()) is JobState.DEAD_LETTER
    job = store.get("r")
    assert job.state is JobState.DEAD_LETTER and job.attempts == 3 and job.finished_at is not None
    assert store.claim("r", "w", utcnow(), 30) is None
    assert event_states(store, "r") == [
        "QUEUED", "RUNNING", "RETRYING", "RUNNING", "RETRYING", "RUNNING", "DEAD_LETTER"
    ]  # fmt: skip


def test_a_run_past_its_lease_can_be_claimed_again(store: SqlJobStore) -> None:
    store.create(new_job("lost"), utcnow())
    store.claim("lost", "w1", utcnow(), 30)
    assert store.claim("lost", "w2", utcnow(), 30) is None, "the lease is live"
    later = utcnow() + timedelta(seconds=31)
    again = store.claim("lost", "w2", later, 30)
    assert again is not None and again.attempts == 2 and again.worker == "w2"
    assert not store.succeed("lost", 1, None, utcnow()), "the lost run's late outcome is ignored"
    store.claim("lost", "w3", later + timedelta(seconds=31), 30)
    assert store.claim("lost", "w4", later + timedelta(seconds=62), 30) is None, "no attempts left"


def test_requeue_gives_fresh_attempts_and_unqueue_undoes_it(store: SqlJobStore) -> None:
    store.create(new_job("f"), utcnow())
    store.claim("f", "w", utcnow(), 30)
    store.fail_run("f", 1, "nope", utcnow(), retry_at=None)
    requeued = store.requeue("f", utcnow())
    assert requeued is not None
    job, previous = requeued
    assert (job.state, job.attempts, previous) == (JobState.QUEUED, 0, JobState.FAILED)
    assert store.requeue("f", utcnow()) is None, "a queued job is not retried"
    store.unqueue("f", previous, utcnow())
    assert store.get("f").state is JobState.FAILED

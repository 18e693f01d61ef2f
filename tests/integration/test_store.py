"""The store contract: one test body per behaviour, run on the in-memory twin, SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from taskapp.clock import utcnow
from taskapp.errors import StoreUnavailable
from taskapp.jobs import (
    START_LOOKAHEAD,
    FlowControl,
    Job,
    JobChange,
    JobFilter,
    JobState,
    LogLine,
    Priority,
    SentMessage,
    SubmitRequest,
    WaitReason,
    WorkerBeat,
)
from taskapp.schedules import Schedule, ScheduleSpec
from taskapp.store.engine import open_store
from taskapp.store.memory import InMemoryJobStore
from taskapp.store.port import JobStore
from taskapp.store.postgres import CREATE, EXISTING, MARK_PUBLISHED, SUCCEED, create_parameters
from taskapp.store.rows import new_job_row
from taskapp.store.sql import SqlJobStore
from tests.helpers import create, make_database_url, new_job

T0 = utcnow()


@pytest.fixture
def heard() -> list[JobChange]:
    """What the store's change hook heard, in order."""
    return []


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path, heard: list[JobChange]) -> Iterator[JobStore]:
    if request.param == "memory":
        yield InMemoryJobStore(change_hooks=[heard.extend])
        return
    sql = open_store(make_database_url(request.param, tmp_path, request), change_hooks=[heard.extend])
    yield sql
    sql.engine.dispose()


def states(store: JobStore, job_id: str) -> list[str]:
    return [event.state.value for event in store.events_after(job_id, 0)]


def test_create_get_round_trip(store: JobStore) -> None:
    job, created = create(store, new_job("a", priority=Priority.HIGH), T0)
    assert created
    assert store.get("a") == job
    assert (job.job_id, job.type, job.priority, job.state) == ("a", "echo", Priority.HIGH, JobState.QUEUED)
    assert job.payload == {"n": 1, "nested": {"list": [1, "two", None]}}
    assert (job.attempts, job.max_attempts, job.timeout_seconds, job.last_error, job.worker) == (
        0,
        3,
        300,
        "",
        "",
    )
    assert job.created_at == job.updated_at == job.scheduled_at == T0
    assert job.created_at.tzinfo is not None
    assert (job.result, job.started_at, job.finished_at, job.lease_expires_at, job.published_at) == (
        None,
    ) * 5
    assert (job.progress_percent, job.progress_message) == (None, "")
    assert store.get("missing") is None
    assert states(store, "a") == ["QUEUED"]


def test_create_many_keeps_order_and_existing_jobs(store: JobStore, heard: list[JobChange]) -> None:
    create(store, new_job("old"), T0)
    later, past = T0 + timedelta(hours=1), T0 - timedelta(hours=1)
    results = store.create_many(
        [
            new_job("x", payload={"b": 1, "a": [1.5, "z", None]}, labels={"team": "a"}),
            new_job("old", type="noop"),
            new_job("later", run_at=later),
            new_job("past", run_at=past),
        ],
        T0,
    )
    assert [(job.job_id, created) for job, created in results] == [
        ("x", True), ("old", False), ("later", True), ("past", True)
    ]  # fmt: skip
    assert results[1][0].type == "echo", "an existing job is returned as it is"
    assert (results[2][0].state, results[2][0].scheduled_at) == (JobState.SCHEDULED, later)
    assert (results[3][0].state, results[3][0].scheduled_at) == (JobState.QUEUED, T0)
    assert results[0][0].seq < results[2][0].seq < results[3][0].seq
    assert [job for job, _ in results] == [store.get(job.job_id) for job, _ in results], "each job as stored"
    assert store.count_scheduled() == 1
    assert heard == [], "creations are not announced"


def test_concurrent_creates_of_one_id_make_one_row(store: JobStore) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda _: create(store, new_job("same")), range(100)))
    assert sum(created for _, created in results) == 1
    assert len({job.seq for job, _ in results}) == 1
    assert states(store, "same") == ["QUEUED"]


def test_claim_run_succeed(store: JobStore, heard: list[JobChange]) -> None:
    create(store, new_job("a"), T0)
    claimed = store.claim("a", "celery@w1", T0, 30, "a@1")
    assert claimed is not None
    assert (claimed.state, claimed.attempts, claimed.worker) == (JobState.RUNNING, 1, "celery@w1")
    assert (claimed.started_at, claimed.lease_expires_at) == (T0, T0 + timedelta(seconds=30))
    assert store.claim("a", "celery@w2", T0, 30, "a@1") is None, "a running job is claimed once"
    assert store.succeed("a", 1, {"ok": [1, 2]}, T0 + timedelta(seconds=2))
    done = store.get("a")
    assert done is not None and (done.state, done.result) == (JobState.SUCCEEDED, {"ok": [1, 2]})
    assert done.finished_at == T0 + timedelta(seconds=2) and done.lease_expires_at is None
    assert states(store, "a") == ["QUEUED", "RUNNING", "SUCCEEDED"]
    assert heard == [
        JobChange("a", "echo", JobState.RUNNING),
        JobChange("a", "echo", JobState.SUCCEEDED, run_seconds=2.0),
    ]


def test_concurrent_claims_of_one_job_have_one_winner(store: JobStore) -> None:
    create(store, new_job("hot"))
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda i: store.claim("hot", f"w{i}", utcnow(), 30, "hot@1"), range(64)))
    assert sum(r is not None for r in results) == 1
    job = store.get("hot")
    assert job is not None and job.attempts == 1


def test_late_or_duplicate_outcomes_never_move_a_job_backwards(store: JobStore) -> None:
    create(store, new_job("a"), T0)
    store.claim("a", "w", T0, 30, "a@1")
    assert not store.fail_run("a", 2, JobState.FAILED, "wrong attempt", T0)
    assert store.fail_run("a", 1, JobState.FAILED, "boom", T0)
    assert not store.succeed("a", 1, None, T0)
    assert not store.fail_run("a", 1, JobState.DEAD_LETTER, "late", T0)
    assert store.claim("a", "w", T0, 30, "a@1") is None
    job = store.get("a")
    assert job is not None and (job.state, job.last_error, job.finished_at) == (JobState.FAILED, "boom", T0)


def test_a_failed_run_retries_after_its_back_off_then_dead_letters(
    store: JobStore, heard: list[JobChange]
) -> None:
    create(store, new_job("r"), T0)  # max_attempts 3
    now = T0
    for attempt in (1, 2):
        claimed = store.claim("r", "w", now, 30, f"r@{attempt}")
        assert claimed is not None and (claimed.attempts, claimed.runs, claimed.task_id) == (
            attempt, attempt, f"r@{attempt}"
        )  # fmt: skip
        retry_at = now + timedelta(seconds=attempt)
        assert store.fail_run("r", attempt, JobState.RETRYING, f"err {attempt}", now, retry_at=retry_at)
        job = store.get("r")
        assert job is not None
        assert (job.state, job.last_error, job.finished_at, job.scheduled_at, job.published_at) == (
            JobState.RETRYING, f"err {attempt}", None, retry_at, None
        )  # fmt: skip
        assert store.claim("r", "w", retry_at - timedelta(milliseconds=1), 30, "early") is None, "backing off"
        now = retry_at
    store.claim("r", "w", now, 30, "r@3")
    assert store.fail_run("r", 3, JobState.DEAD_LETTER, "err 3", now)
    job = store.get("r")
    assert job is not None and (job.state, job.attempts, job.finished_at) == (JobState.DEAD_LETTER, 3, now)
    assert store.claim("r", "w", now, 30, "r@4") is None, "no attempts left"
    assert states(store, "r") == [
        "QUEUED", "RUNNING", "RETRYING", "RUNNING", "RETRYING", "RUNNING", "DEAD_LETTER"
    ]  # fmt: skip
    assert [change.state for change in heard].count(JobState.RETRYING) == 2


@pytest.mark.parametrize(
    ("outcome", "retry_at"),
    [(JobState.RETRYING, None), (JobState.FAILED, T0), (JobState.SUCCEEDED, None), (JobState.QUEUED, None)],
)
def test_a_failed_run_ends_only_in_a_failure_state(
    store: JobStore, outcome: JobState, retry_at: object
) -> None:
    create(store, new_job("a"), T0)
    store.claim("a", "w", T0, 30, "a@1")
    with pytest.raises(ValueError, match="a failed run cannot end"):
        store.fail_run("a", 1, outcome, "boom", T0, retry_at=retry_at)  # type: ignore[arg-type]
    job = store.get("a")
    assert job is not None and job.state is JobState.RUNNING


def test_leases_are_renewed_for_the_worker_s_own_live_runs_only(store: JobStore) -> None:
    for job_id in ("a", "b", "c", "d"):
        create(store, new_job(job_id), T0)
        store.claim(job_id, "w1", T0, 30, f"{job_id}@1")
    renewed = store.renew_leases(
        "w1", {"a": "a@1", "b": "b@9", "c": "c@1", "gone": "gone@1"}, T0 + timedelta(seconds=10), 30
    )
    assert renewed == {"a", "c"}, "a wrong task id and an unknown job are not renewed"
    assert store.renew_leases("w2", {"d": "d@1"}, T0 + timedelta(seconds=10), 30) == set(), "another worker's"
    a, d = store.get("a"), store.get("d")
    assert a is not None and a.lease_expires_at == T0 + timedelta(seconds=40)
    assert d is not None and d.lease_expires_at == T0 + timedelta(seconds=30)
    assert store.renew_leases("w1", {"d": "d@1"}, T0 + timedelta(seconds=31), 30) == set(), "lapsed: lost"
    assert store.renew_leases("w1", {}, T0, 30) == set()


def test_a_lapsed_run_is_not_claimed_again_but_rescued_after_a_back_off(store: JobStore) -> None:
    create(store, new_job("lost"), T0)
    store.claim("lost", "w1", T0, 30, "lost@1")
    lapse = T0 + timedelta(seconds=31)
    assert store.claim("lost", "w2", lapse, 30, "lost@2") is None, "a RUNNING job is never claimed"
    assert store.lapsed_runs(T0 + timedelta(seconds=29), 10) == []
    assert [job.job_id for job in store.lapsed_runs(lapse, 10)] == ["lost"]
    assert not store.fail_run(
        "lost", 1, JobState.RETRYING, "lease lapsed", T0 + timedelta(seconds=29), retry_at=lapse, lapsed=True
    ), "a live lease is not ended as lapsed"
    assert store.fail_run("lost", 1, JobState.RETRYING, "lease lapsed", lapse, retry_at=lapse, lapsed=True)
    assert not store.succeed("lost", 1, None, lapse), "the lost run's late outcome is refused"
    again = store.claim("lost", "w2", lapse, 30, "lost@2")
    assert again is not None and (again.attempts, again.runs, again.worker) == (2, 2, "w2")


def test_release_gives_the_attempt_back_only_to_the_run_s_own_worker(store: JobStore) -> None:
    create(store, new_job("a"), T0)
    store.claim("a", "w1", T0, 30, "a@1")
    assert not store.release("a", "w2", T0)
    assert store.release("a", "w1", T0 + timedelta(seconds=1))
    job = store.get("a")
    assert job is not None
    assert (job.state, job.attempts, job.started_at, job.lease_expires_at) == (JobState.QUEUED, 0, None, None)
    assert job.published_at == T0 + timedelta(seconds=1), "the broker keeps its message"
    assert not store.release("a", "w1", T0), "only a running job"


def test_cancel_from_each_state(store: JobStore, heard: list[JobChange]) -> None:
    for job_id in ("queued", "running", "done", "later"):
        create(store, new_job(job_id, run_at=T0 + timedelta(hours=1) if job_id == "later" else None), T0)
    store.claim("running", "w", T0, 30, "running@1")
    store.claim("done", "w", T0, 30, "done@1")
    store.succeed("done", 1, None, T0)
    heard.clear()

    for job_id, previous, run in (
        ("queued", "QUEUED", ""), ("running", "RUNNING", "running@1"), ("later", "SCHEDULED", "")
    ):  # fmt: skip
        outcome = store.cancel(job_id, T0)
        assert outcome is not None and outcome.cancelled and outcome.previous_state == previous
        assert outcome.task_id == run, "a running job's outcome names the run to stop"
        job = store.get(job_id)
        assert job is not None and (job.state, job.finished_at, job.lease_expires_at) == (
            JobState.CANCELLED, T0, None
        )  # fmt: skip
    done = store.cancel("done", T0)
    assert done is not None and not done.cancelled and done.state is JobState.SUCCEEDED
    assert store.cancel("missing", T0) is None
    assert store.claim("queued", "w", T0, 30, "queued@1") is None
    assert not store.succeed("running", 1, None, T0)
    assert [change.state for change in heard] == [JobState.CANCELLED] * 3


def test_discard_removes_only_unstarted_jobs(store: JobStore) -> None:
    create(store, new_job("a"), T0)
    create(store, new_job("b"), T0)
    create(store, new_job("c", run_at=T0 + timedelta(hours=1)), T0)
    store.claim("b", "w", T0, 30, "b@1")
    store.discard_many(["a", "b", "c", "missing"])
    assert store.get("a") is None and store.get("c") is None and states(store, "a") == []
    assert store.get("b") is not None


def test_list_filters_and_keyset_pages(store: JobStore) -> None:
    for i in range(30):
        create(store, new_job(f"j{i:02}", type="echo" if i % 2 else "noop", priority=list(Priority)[i % 4]))
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


def test_list_filters_on_labels_created_at_and_job_id_prefix(store: JobStore) -> None:
    for i in range(24):
        labels = {"env": ["prod", "dev"][i % 2], "team": f"t{i % 3}"}
        if i == 7:
            labels["odd key.with/all-chars_9"] = "a value: with spaces"
        create(store, new_job(f"{['a', 'b'][i // 12]}_{i:02}", labels=labels), T0 + timedelta(minutes=i))

    def ids(**filters: Any) -> list[str]:
        return [job.job_id for job in store.list(JobFilter(**filters), 100, None)]

    assert store.get("a_07") is not None and store.get("a_07").labels == {  # type: ignore[union-attr]
        "env": "dev",
        "team": "t1",
        "odd key.with/all-chars_9": "a value: with spaces",
    }
    assert ids(labels={"env": "prod", "team": "t0"}) == [f"{'ab'[i // 12]}_{i:02}" for i in (18, 12, 6, 0)]
    assert ids(labels={"odd key.with/all-chars_9": "a value: with spaces"}) == ["a_07"]
    assert ids(labels={"env": "prod", "team": "nobody"}) == []
    window = {"created_after": T0 + timedelta(minutes=5), "created_before": T0 + timedelta(minutes=9)}
    assert ids(**window) == ["a_08", "a_07", "a_06", "a_05"]
    assert ids(labels={"env": "dev"}, **window) == ["a_07", "a_05"]
    assert ids(job_id_prefix="b_1") == [f"b_{i}" for i in range(19, 11, -1)]
    # `_` is a character of job ids, not LIKE's wildcard; `%` matches itself (no job has one).
    assert ids(job_id_prefix="a_") == [f"a_{i:02}" for i in reversed(range(12))]
    assert ids(job_id_prefix="a%") == [] and ids(job_id_prefix="ab") == []
    first = store.list(JobFilter(labels={"env": "dev"}), 5, None)
    rest = store.list(JobFilter(labels={"env": "dev"}), 100, first[-1].seq)
    assert [job.job_id for job in first + rest] == ids(labels={"env": "dev"})


def test_requeue_many_queues_the_retryable_ones_and_says_what_each_was(store: JobStore) -> None:
    for job_id, outcome in (("d", JobState.DEAD_LETTER), ("f", JobState.FAILED), ("s", None), ("q", None)):
        create(store, new_job(job_id), T0)
        if job_id != "q":
            store.claim(job_id, "w", T0, 30, f"{job_id}@1")
            if outcome is None:
                store.succeed(job_id, 1, None, T0)
            else:
                store.fail_run(job_id, 1, outcome, "boom", T0)
    requeued = store.requeue_many(["d", "f", "s", "q", "missing"], T0)
    assert sorted((job.job_id, job.state, job.attempts, was) for job, was in requeued) == [
        ("d", JobState.QUEUED, 0, JobState.DEAD_LETTER),
        ("f", JobState.QUEUED, 0, JobState.FAILED),
    ]
    assert store.latest_event("d").message == "retry requested (was DEAD_LETTER)"  # type: ignore[union-attr]
    assert store.requeue_many(["d", "f"], T0) == [], "queued now: not retryable again"


def test_requeue_gives_fresh_attempts_and_unqueue_undoes_it(store: JobStore) -> None:
    create(store, new_job("f"), T0)
    store.claim("f", "w", T0, 30, "f@1")
    store.fail_run("f", 1, JobState.FAILED, "nope", T0)
    requeued = store.requeue("f", T0)
    assert requeued is not None
    job, previous = requeued
    assert (job.state, job.attempts, job.published_at, previous) == (
        JobState.QUEUED,
        0,
        None,
        JobState.FAILED,
    )
    assert store.requeue("f", T0) is None, "a queued job is not retried"
    store.unqueue("f", previous, T0)
    back = store.get("f")
    assert back is not None and back.state is JobState.FAILED
    assert states(store, "f")[-2:] == ["QUEUED", "FAILED"]


def test_mark_published_only_for_the_state_the_message_was_sent_for(store: JobStore) -> None:
    job, _ = create(store, new_job("j"), T0)
    store.mark_published([SentMessage.of(job)], T0)
    published = store.get("j")
    assert published is not None and published.published_at == T0
    store.claim("j", "w", T0, 60, "j@1")
    store.fail_run("j", 1, JobState.RETRYING, "boom", T0, retry_at=T0 + timedelta(seconds=1))
    store.mark_published([SentMessage.of(job)], T0)  # the submit's mark, arriving late
    retrying = store.get("j")
    assert retrying is not None and retrying.state is JobState.RETRYING and retrying.published_at is None
    store.mark_published([SentMessage.of(retrying)], T0 + timedelta(seconds=1))
    marked = store.get("j")
    assert marked is not None and marked.published_at == T0 + timedelta(seconds=1)


def test_the_outbox_index_holds_only_jobs_that_owe_a_message(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """At a low rate a job is claimed before the gateway marks its message sent: it owes nothing, and must not
    stay in the index that the mark and the scheduler's `owed` read (it grew with every job, and so did they)."""
    store = open_store(make_database_url("postgres", tmp_path, request))
    assert isinstance(store, SqlJobStore)
    try:
        store.create_many([new_job(f"claimed-{n}") for n in range(500)], T0)
        for n in range(500):
            store.claim(f"claimed-{n}", "w", T0, 30, f"claimed-{n}@1")
        store.create_many([new_job(f"cancelled-{n}") for n in range(100)], T0)
        for n in range(100):
            store.cancel(f"cancelled-{n}", T0)
        owing, _ = create(store, new_job("owing"), T0)
        with store.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM jobs")
            entries = conn.exec_driver_sql(
                "SELECT reltuples FROM pg_class WHERE relname = 'ix_jobs_unpublished'"
            ).scalar_one()
        assert entries == 1
        assert [
            job.job_id for job in store.owed(T0 + timedelta(seconds=10), T0 + timedelta(seconds=10), 10)
        ] == ["owing"]
        store.mark_published([SentMessage.of(owing)], T0)
        marked = store.get("owing")
        assert marked is not None and marked.published_at == T0
    finally:
        store.engine.dispose()


def test_marking_published_finds_jobs_by_id_whatever_the_statistics_say(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Planned on statistics from when the table was empty, a mark that could use the outbox index scanned it
    and compared every row with every job of the batch: 14 s for a batch of thousands."""
    url = make_database_url("postgres", tmp_path, request)
    store = open_store(url)
    try:
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute("ANALYZE jobs")  # empty: the planner believes the outbox index holds nothing
            store.create_many([new_job(f"owing-{n}") for n in range(2_000)], T0)
            batch = [SentMessage.of(job) for job in store.list(JobFilter(), 2_000, None)]
            conn.execute("SET plan_cache_mode = force_generic_plan")
            params = {
                "now": T0,
                "job_id": [message.job_id for message in batch],
                "state": [message.state.value for message in batch],
                "attempts": [message.attempts for message in batch],
            }
            plan = "\n".join(
                row[0] for row in conn.execute("EXPLAIN " + MARK_PUBLISHED, params, prepare=True)
            )
        assert "ix_jobs_unpublished" not in plan, plan
    finally:
        store.engine.dispose()


def test_a_submit_reads_jobs_by_id_only_whatever_the_statistics_say(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A plan cached while `jobs` was small joined each submit's batch to the whole table: 9 ms per SubmitJob at
    11,000 rows in the benchmark, growing with the table until an ANALYZE. Neither the create nor the read of
    ids that already exist may scan the table, whatever the planner believes of its size."""
    url = make_database_url("postgres", tmp_path, request)
    store = open_store(url)
    try:
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute("ANALYZE jobs")  # empty: the planner believes a scan of it costs nothing
            store.create_many([new_job(f"old-{n}") for n in range(2_000)], T0)
            conn.execute("SET plan_cache_mode = force_generic_plan")
            plans = [
                "\n".join(row[0] for row in conn.execute("EXPLAIN " + statement, params, prepare=True))
                for statement, params in (
                    (CREATE, create_parameters([new_job_row(new_job("new"), T0)], T0)),
                    (EXISTING, {"job_id": ["old-1"]}),
                )
            ]
        for plan in plans:
            assert "Seq Scan on jobs" not in plan, plan
        assert [created for _, created in store.create_many([new_job("new"), new_job("old-1")], T0)] == [
            True,
            False,
        ]
    finally:
        store.engine.dispose()


def test_a_run_s_end_finds_its_job_by_id_however_many_jobs_run(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Statistics taken while no job ran, then thousands running (a fleet started since the last ANALYZE): a
    state index looked the cheaper way to one RUNNING job, and each success scanned every running job (1.9 ms
    each at 5,000). Every statement that moves one job finds it by id, whatever the planner believes."""
    url = make_database_url("postgres", tmp_path, request)
    store = open_store(url)
    updates: list[tuple[str, Any]] = []

    def record_update(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            updates.append((statement, parameters))

    try:
        store.create_many([new_job(f"job-{n}") for n in range(3_000)], T0)
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute("ANALYZE jobs")  # every job QUEUED: RUNNING looks rare
            conn.execute("UPDATE jobs SET state = 'RUNNING', attempts = 1, worker = 'w' WHERE seq % 2 = 0")
            running = [
                row[0]
                for row in conn.execute(
                    "SELECT job_id FROM jobs WHERE state = 'RUNNING' ORDER BY seq LIMIT 4"
                )
            ]
            sa.event.listen(store.engine, "before_cursor_execute", record_update)
            assert store.report_progress(running[0], 1, 50, "half way", T0)
            assert store.fail_run(running[1], 1, JobState.FAILED, "boom", T0)
            assert store.release(running[2], "w", T0)
            cancelled = store.cancel(running[3], T0)
            assert cancelled is not None and cancelled.cancelled
            assert len(updates) >= 4, updates
            succeed = {"job_id": running[0], "attempt": 1, "now": T0, "result": None}
            conn.execute("SET plan_cache_mode = force_generic_plan")
            plans = [
                "\n".join(row[0] for row in conn.execute("EXPLAIN " + statement, params, prepare=True))
                for statement, params in [*updates, (SUCCEED, succeed)]
            ]
        for plan in plans:
            assert "Index Cond: ((state)" not in plan, plan
            assert "Index Cond: ((job_id)" in plan, plan
    finally:
        store.engine.dispose()


def test_progress_and_events_of_a_run(store: JobStore, heard: list[JobChange]) -> None:
    create(store, new_job("p"), T0)
    store.claim("p", "w", T0, 30, "p@1")
    assert store.report_progress("p", 1, 40, "downloaded", T0)
    assert not store.report_progress("p", 2, 50, "wrong attempt", T0)
    job = store.get("p")
    assert job is not None and (job.progress_percent, job.progress_message) == (40, "downloaded")
    latest = store.latest_event("p")
    assert latest is not None
    assert (latest.state, latest.attempt, latest.progress_percent, latest.message) == (
        JobState.RUNNING, 1, 40, "downloaded"
    )  # fmt: skip
    assert heard[-1] == JobChange("p", "echo", JobState.RUNNING, progress=True)
    store.succeed("p", 1, None, T0)
    newer = store.events_after("p", latest.seq)
    assert [event.state for event in newer] == [JobState.SUCCEEDED]
    assert newer[0].seq > latest.seq
    assert store.latest_event("missing") is None


def test_logs_are_kept_per_job_in_order(store: JobStore) -> None:
    create(store, new_job("l"), T0)
    lines = [LogLine(T0, "INFO", 1, "first"), LogLine(T0, "WARNING", 1, "second line")]
    store.append_logs("l", lines)
    store.append_logs("l", [])
    store.append_logs("other", [LogLine(T0, "INFO", 1, "not mine")])
    assert store.logs("l") == lines
    assert store.log_usage("l") == (2, len("first") + len("second line"))
    assert store.log_usage("none") == (0, 0)


def test_due_scheduled_jobs_are_promoted_oldest_first(store: JobStore, heard: list[JobChange]) -> None:
    for n, seconds in enumerate((30, 10, 20, 3_600)):
        create(store, new_job(f"s{n}", run_at=T0 + timedelta(seconds=seconds)), T0)
    assert store.promote_due(T0 + timedelta(seconds=5), 10) == []
    promoted = store.promote_due(T0 + timedelta(seconds=40), 2)
    assert [job.job_id for job in promoted] == ["s1", "s2"]
    assert all(job.state is JobState.QUEUED and job.published_at is None for job in promoted)
    assert [job.job_id for job in store.promote_due(T0 + timedelta(seconds=40), 10)] == ["s0"]
    assert store.count_scheduled() == 1
    assert [change.job_id for change in heard] == ["s1", "s2", "s0"]


def test_owed_messages_and_jobs_awaiting_a_run(store: JobStore) -> None:
    sent, _ = create(store, new_job("sent"), T0)
    store.mark_published([SentMessage.of(sent)], T0)
    create(store, new_job("owed-1"), T0)
    create(store, new_job("owed-2"), T0 + timedelta(seconds=1))
    create(store, new_job("running"), T0)
    store.claim("running", "w", T0, 30, "running@1")
    create(store, new_job("done"), T0)
    store.cancel("done", T0)

    create(store, new_job("retry"), T0)
    store.claim("retry", "w", T0, 30, "retry@1")
    store.fail_run("retry", 1, JobState.RETRYING, "boom", T0, retry_at=T0 + timedelta(seconds=3))

    later = T0 + timedelta(seconds=10)
    owed = store.owed(T0 + timedelta(seconds=2), T0 + timedelta(seconds=2), 10)
    assert [job.job_id for job in owed] == ["owed-1", "owed-2"], "a retry is owed once its back-off ends"
    assert [job.job_id for job in store.owed(later, T0 + timedelta(milliseconds=500), 10)] == [
        "owed-1",
        "retry",
    ]

    assert store.expected_messages(later, later) == (1, 1), "sent, published; running"
    half = T0 + timedelta(milliseconds=500)
    unmarked = store.awaiting_run(later, half, half, 0, 10)
    assert [job.job_id for job in unmarked] == ["sent", "owed-1", "retry"], "written before, mark pending"
    assert [job.job_id for job in store.awaiting_run(later, half, T0, 0, 10)] == ["sent"], "published only"
    for job in store.owed(later, later, 10):  # the scheduler sends what is owed
        store.mark_published([SentMessage.of(job)], T0 + timedelta(seconds=5))
    assert store.expected_messages(later, later) == (4, 1)
    assert store.expected_messages(later, T0 + timedelta(seconds=5)) == (1, 1), "published before then"
    waiting = store.awaiting_run(later, later, later, 0, 10)
    assert [job.job_id for job in waiting] == ["sent", "owed-1", "owed-2", "retry"]
    assert [job.job_id for job in store.awaiting_run(later, T0 + timedelta(seconds=1), T0, 0, 10)] == ["sent"]
    page = store.awaiting_run(later, later, later, waiting[1].seq, 1)
    assert [job.job_id for job in page] == ["owed-2"]


def test_purge_deletes_finished_jobs_with_their_events_and_logs(store: JobStore) -> None:
    for n in range(3):
        create(store, new_job(f"old-{n}"), T0)
        store.append_logs(f"old-{n}", [LogLine(T0, "INFO", 1, "bye")])
        store.cancel(f"old-{n}", T0)
    create(store, new_job("queued-long-ago"), T0)
    create(store, new_job("recent"), T0 + timedelta(days=1))
    store.cancel("recent", T0 + timedelta(days=1))

    cutoff = T0 + timedelta(hours=1)
    first = store.purge_finished(cutoff, 2)
    second = store.purge_finished(cutoff, 2)
    assert len(first) == 2 and len(second) == 1
    assert {job_id for job_id, _ in first + second} == {"old-0", "old-1", "old-2"}
    assert {state for _, state in first + second} == {JobState.CANCELLED}
    assert store.purge_finished(cutoff, 2) == []
    assert all(store.get(f"old-{n}") is None for n in range(3))
    assert states(store, "old-0") == [] and store.logs("old-0") == []
    assert store.get("queued-long-ago") is not None and store.get("recent") is not None


def test_counts_per_state_name_every_state_asked_for(store: JobStore) -> None:
    for n in range(3):
        create(store, new_job(f"q{n}"), T0)
    create(store, new_job("later", run_at=T0 + timedelta(hours=1)), T0)
    store.claim("q0", "w", T0, 30, "q0@1")
    asked = [JobState.QUEUED, JobState.RUNNING, JobState.SCHEDULED, JobState.DEAD_LETTER]
    assert store.count_states(asked) == {
        JobState.QUEUED: 2, JobState.RUNNING: 1, JobState.SCHEDULED: 1, JobState.DEAD_LETTER: 0
    }  # fmt: skip


def test_activity_counts_finished_jobs_per_minute_type_and_state(store: JobStore) -> None:
    minute = T0.replace(second=0, microsecond=0)
    runs = [("a", "echo", 1.5, True), ("b", "echo", 3.0, True), ("c", "noop", 0.5, False)]
    for job_id, type, seconds, succeeds in runs:
        create(store, new_job(job_id, type=type), minute)
        store.claim(job_id, "w", minute, 30, f"{job_id}@1")
        ended = minute + timedelta(seconds=seconds)
        if succeeds:
            store.succeed(job_id, 1, None, ended)
        else:
            store.fail_run(job_id, 1, JobState.DEAD_LETTER, "boom", ended)
    create(store, new_job("old"), minute - timedelta(hours=2))
    store.cancel("old", minute - timedelta(hours=2))

    found = {(a.type, a.state): a for a in store.activity(minute - timedelta(minutes=1))}
    assert set(found) == {("echo", JobState.SUCCEEDED), ("noop", JobState.DEAD_LETTER)}
    echo = found["echo", JobState.SUCCEEDED]
    assert (echo.minute, echo.count) == (minute, 2)
    assert echo.run_seconds == pytest.approx(4.5, abs=0.01)
    assert echo.max_run_seconds == pytest.approx(3.0, abs=0.01)
    assert found["noop", JobState.DEAD_LETTER].count == 1


def test_a_workers_latest_beat_is_kept(store: JobStore) -> None:
    def beat(name: str, seen: timedelta, pid: int = 1) -> WorkerBeat:
        return WorkerBeat(name, "host", pid, 4, T0, T0 + seen)

    store.beat(beat("w1@host", timedelta(seconds=0)))
    store.beat(beat("w1@host", timedelta(seconds=5), pid=2))
    store.beat(beat("w0@host", timedelta(seconds=3)))
    store.beat(beat("gone@host", timedelta(hours=-2)))
    assert store.workers(T0 - timedelta(hours=1)) == [
        beat("w0@host", timedelta(seconds=3)),
        beat("w1@host", timedelta(seconds=5), pid=2),
    ]


def test_a_unique_key_is_held_for_its_window_then_free(store: JobStore) -> None:
    window = timedelta(seconds=30)
    _, created = create(store, new_job("u1", unique_key="invoice-7", unique_for=window), T0)
    assert created
    results = store.create_many(
        [
            new_job("u2", unique_key="invoice-7", unique_for=window),
            new_job("other", unique_key="invoice-8", unique_for=window),
            new_job("u3", unique_key="invoice-7", unique_for=window),
        ],
        T0 + timedelta(seconds=29),
    )
    assert [(job.job_id, created) for job, created in results] == [
        ("u1", False),
        ("other", True),
        ("u1", False),
    ]
    assert store.get("u2") is None
    store.cancel("u1", T0)  # finishing does not end a window
    assert store.create_many([new_job("u4", unique_key="invoice-7", unique_for=window)], T0 + window)[0][1]
    assert store.create_many([new_job("u5", unique_key="invoice-7")], T0 + window)[0][0].job_id == "u4"


def test_a_unique_key_without_a_window_is_held_until_its_job_has_finished(store: JobStore) -> None:
    create(store, new_job("w1", unique_key="sync-acme"), T0)
    store.claim("w1", "w", T0, 30, "w1@1")
    assert store.create_many([new_job("w2", unique_key="sync-acme")], T0)[0] == (store.get("w1"), False)
    store.succeed("w1", 1, None, T0)
    job, created = store.create_many([new_job("w2", unique_key="sync-acme")], T0)[0]
    assert created and job.job_id == "w2"


def test_concurrent_creates_with_one_unique_key_make_one_job(store: JobStore) -> None:
    """Each create in its own transaction, at once: the key's primary key decides, not a read before a write."""

    def create_one(n: int) -> tuple[Job, bool]:
        return store.create_many(
            [new_job(f"race-{n}", unique_key="race", unique_for=timedelta(hours=1))], T0
        )[0]

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(create_one, range(40)))
    winners = [job.job_id for job, created in results if created]
    assert len(winners) == 1
    assert {job.job_id for job, _ in results} == set(winners)
    assert sum(store.get(f"race-{n}") is not None for n in range(40)) == 1


def test_a_discarded_job_lets_go_of_its_unique_key(store: JobStore) -> None:
    create(store, new_job("d1", unique_key="k", unique_for=timedelta(hours=1)), T0)
    store.discard_many(["d1"])
    assert store.create_many([new_job("d2", unique_key="k", unique_for=timedelta(hours=1))], T0)[0][1]


def _claim(store: JobStore, job_id: str) -> Job | None:
    return store.claim(job_id, "w1", T0, 60, f"{job_id}:1")


def test_a_key_runs_at_most_its_limit_and_the_others_wait_in_line_without_a_message(store: JobStore) -> None:
    for n in range(3):
        create(store, new_job(f"k{n}", concurrency_key="customer-1", concurrency_limit=2), T0)
    store.mark_published([SentMessage.of(store.get(f"k{n}")) for n in range(3)], T0)  # type: ignore[arg-type]
    assert _claim(store, "k0") and _claim(store, "k1")
    assert _claim(store, "k2") is None
    waiting = store.get("k2")
    assert waiting is not None
    assert (waiting.state, waiting.waiting_for, waiting.published_at) == (
        JobState.QUEUED,
        WaitReason.KEY_LIMIT,
        T0,
    )
    later = T0 + timedelta(hours=1)
    assert store.owed(later, later, 10) == []
    assert store.awaiting_run(later, later, later, 0, 10) == []
    assert store.types_in_line() == ["echo"]
    assert store.let_out("echo", T0, 10) == [], "no room while two run"

    assert store.succeed("k0", 1, None, T0)
    [released] = store.let_out("echo", T0, 10)
    assert (released.job_id, released.waiting_for, released.published_at) == ("k2", WaitReason.RELEASED, None)
    assert store.let_out("echo", T0, 10) == [], "the one let out holds the free slot"
    assert [job.job_id for job in store.owed(later, later, 10)] == ["k2"]
    claimed = _claim(store, "k2")
    assert claimed is not None and claimed.flow_limited and claimed.waiting_for is WaitReason.NONE
    assert store.types_in_line() == []


def test_a_newcomer_does_not_take_a_slot_that_frees_while_a_line_waits_for_it(store: JobStore) -> None:
    store.put_flow_control(FlowControl("type:echo", max_running=1))
    for job_id in ("t0", "t1", "t2"):
        create(store, new_job(job_id), T0)
    for job_id in ("k0", "k1", "k2"):
        create(store, new_job(job_id, type="noop", concurrency_key="c", concurrency_limit=1), T0)
    assert _claim(store, "t0") and _claim(store, "k0")
    assert _claim(store, "t1") is None and _claim(store, "k1") is None
    # Each run ends; before its worker lets its line's next job out, a newcomer's message comes.
    assert store.succeed("t0", 1, None, T0) and store.succeed("k0", 1, None, T0)
    assert _claim(store, "t2") is None and _claim(store, "k2") is None
    assert store.get("t2").waiting_for is WaitReason.TYPE_LIMIT  # type: ignore[union-attr]
    assert store.get("k2").waiting_for is WaitReason.KEY_LIMIT  # type: ignore[union-attr]
    assert [job.job_id for job in store.let_out("echo", T0, 10)] == ["t1"]
    assert [job.job_id for job in store.let_out("noop", T0, 10)] == ["k1"]


def test_a_type_limit_lets_keys_take_turns_within_a_priority(store: JobStore) -> None:
    store.put_flow_control(FlowControl("type:echo", max_running=1))
    assert store.flow_controls() == [FlowControl("type:echo", max_running=1)]
    for n in range(5):
        create(store, new_job(f"a{n}", concurrency_key="a"), T0)
    for n in range(2):
        create(store, new_job(f"b{n}", concurrency_key="b"), T0)
    create(store, new_job("urgent", concurrency_key="a", priority=Priority.HIGH), T0)
    create(store, new_job("free", type="noop"), T0)
    assert _claim(store, "free"), "another type is not limited"
    assert _claim(store, "a0")
    for job_id in ("a1", "a2", "a3", "a4", "b0", "b1", "urgent"):
        assert _claim(store, job_id) is None
        assert store.get(job_id).waiting_for is WaitReason.TYPE_LIMIT  # type: ignore[union-attr]
    started = ["a0"]
    while True:
        assert store.succeed(started[-1], 1, None, T0)
        let_out = store.let_out("echo", T0, 10)
        if not let_out:
            break
        assert len(let_out) == 1, "one slot"
        assert _claim(store, let_out[0].job_id)
        started.append(let_out[0].job_id)
    assert started == ["a0", "urgent", "a1", "b0", "a2", "b1", "a3", "a4"]

    store.put_flow_control(FlowControl("type:echo"))
    assert store.flow_controls() == []


def test_a_paused_queue_or_type_starts_nothing_and_lets_its_jobs_out_on_resume(store: JobStore) -> None:
    create(store, new_job("high", priority=Priority.HIGH), T0)
    create(store, new_job("default"), T0)
    create(store, new_job("other", type="noop"), T0)
    store.put_flow_control(FlowControl("queue:high", paused=True))
    store.put_flow_control(FlowControl("type:noop", paused=True))
    assert _claim(store, "high") is None and _claim(store, "other") is None
    assert {store.get(job_id).waiting_for for job_id in ("high", "other")} == {WaitReason.PAUSED}  # type: ignore[union-attr]
    assert _claim(store, "default"), "another queue of the type goes on"
    assert store.let_out("echo", T0, 10) == [] and store.let_out("noop", T0, 10) == []

    # A waiting job cancelled, then retried, is out of the line: its new message claims it.
    assert store.cancel("high", T0) is not None
    assert store.types_in_line() == ["noop"]
    [(retried, _)] = store.requeue_many(["high"], T0)
    assert retried.waiting_for is WaitReason.NONE
    store.put_flow_control(FlowControl("queue:high", paused=True))
    assert _claim(store, "high") is None, "paused again"
    store.put_flow_control(FlowControl("queue:high"))
    assert [job.job_id for job in store.let_out("echo", T0, 10)] == ["high"]
    assert store.let_out("noop", T0, 10) == [], "its type is still paused"
    store.put_flow_control(FlowControl("type:noop", paused=False))
    assert store.flow_controls() == []
    assert [job.job_id for job in store.let_out("noop", T0, 10)] == ["other"]
    assert _claim(store, "high") and _claim(store, "other")


def test_a_rate_gives_each_start_its_time_and_lets_waiting_jobs_out_at_theirs(store: JobStore) -> None:
    store.put_flow_control(FlowControl("type:echo", rate=2, rate_seconds=1.0))
    for n in range(3):
        create(store, new_job(f"r{n}"), T0)

    def claim(job_id: str, at: timedelta) -> Job | None:
        return store.claim(job_id, "w1", T0 + at, 60, f"{job_id}:1")

    assert claim("r0", timedelta(0))
    assert claim("r1", timedelta(0)) is None and claim("r2", timedelta(0)) is None
    given = {job_id: store.get(job_id) for job_id in ("r1", "r2")}
    assert {job.waiting_for for job in given.values()} == {WaitReason.RATE_LIMIT}  # type: ignore[union-attr]
    assert [given[job_id].scheduled_at for job_id in ("r1", "r2")] == [  # type: ignore[union-attr]
        T0 + timedelta(seconds=0.5),
        T0 + timedelta(seconds=1),
    ]
    # Each is let out as its start comes near (`START_LOOKAHEAD`), for its message to be sent to start then.
    assert (
        store.let_out("echo", T0 + timedelta(seconds=0.5) - START_LOOKAHEAD - timedelta(seconds=0.1), 10)
        == []
    )
    assert [
        job.job_id for job in store.let_out("echo", T0 + timedelta(seconds=0.5) - START_LOOKAHEAD, 10)
    ] == ["r1"]
    assert claim("r1", timedelta(seconds=0.5)), "its start was given when it waited"
    assert [job.job_id for job in store.let_out("echo", T0 + timedelta(seconds=1), 10)] == ["r2"]
    [control] = store.flow_controls()
    assert control.next_start_at == T0 + timedelta(seconds=1.5)

    # Let out late (the scheduler was held up), the given starts move later alike: they stay spaced.
    for n in range(3, 6):
        create(store, new_job(f"r{n}"), T0)
        assert claim(f"r{n}", timedelta(seconds=1)) is None
    late = T0 + timedelta(seconds=3)
    released = store.let_out("echo", late, 10)
    assert [(job.job_id, job.scheduled_at) for job in released] == [
        ("r3", late),
        ("r4", late + timedelta(seconds=0.5)),
    ]
    assert store.get("r5").scheduled_at == late + timedelta(seconds=1)  # type: ignore[union-attr]


def test_a_claim_just_before_its_rate_s_next_start_takes_it_and_starts_then(store: JobStore) -> None:
    store.put_flow_control(FlowControl("type:echo", rate=2, rate_seconds=1.0))
    for n in range(3):
        create(store, new_job(f"h{n}"), T0)
    first = store.claim("h0", "w1", T0, 60, "h0:1")
    assert first is not None and first.started_at == T0
    # 0.2 s before the next start, within a claim's hold (half a spacing): taken, the worker waits for it.
    second = store.claim("h1", "w1", T0 + timedelta(seconds=0.3), 60, "h1:1")
    assert second is not None and second.started_at == T0 + timedelta(seconds=0.5)
    # Further ahead: given the start after, and waits in line for it.
    assert store.claim("h2", "w1", T0 + timedelta(seconds=0.3), 60, "h2:1") is None
    waiting = store.get("h2")
    assert waiting is not None and waiting.waiting_for is WaitReason.RATE_LIMIT
    assert waiting.scheduled_at == T0 + timedelta(seconds=1)
    # Let out for it, and claimed a little early: it starts at its start, never less than a spacing after the last.
    assert [job.job_id for job in store.let_out("echo", T0 + timedelta(seconds=0.6), 10)] == ["h2"]
    third = store.claim("h2", "w1", T0 + timedelta(seconds=0.9), 60, "h2:1")
    assert third is not None and third.started_at == T0 + timedelta(seconds=1)


def test_a_key_s_rate_holds_its_jobs_of_every_type_and_no_other_key(store: JobStore) -> None:
    store.put_flow_control(FlowControl("key:tenant", rate=1, rate_seconds=2.0))
    create(store, new_job("k0", concurrency_key="tenant"), T0)
    create(store, new_job("k1", type="noop", concurrency_key="tenant"), T0)
    create(store, new_job("other", concurrency_key="other-tenant"), T0)
    assert _claim(store, "k0") and _claim(store, "other")
    assert _claim(store, "k1") is None
    waiting = store.get("k1")
    assert waiting is not None and waiting.waiting_for is WaitReason.RATE_LIMIT
    assert waiting.scheduled_at == T0 + timedelta(seconds=2)
    assert store.let_out("noop", T0, 10) == []
    assert [job.job_id for job in store.let_out("noop", T0 + timedelta(seconds=2), 10)] == ["k1"]
    assert store.claim("k1", "w1", T0 + timedelta(seconds=2), 60, "k1:1")


def test_waiting_stats_count_the_lines_by_reason_and_key_and_date_the_oldest_due_job(store: JobStore) -> None:
    for n in range(4):
        create(store, new_job(f"w{n}", concurrency_key="big" if n < 3 else "small", concurrency_limit=1), T0)
    create(store, new_job("later", priority=Priority.LOW), T0 + timedelta(seconds=5))
    assert _claim(store, "w0") and _claim(store, "w3")
    assert _claim(store, "w1") is None and _claim(store, "w2") is None
    stats = store.waiting_stats(top_keys=1)
    assert stats.by_reason == {WaitReason.KEY_LIMIT: 2}
    assert stats.top_keys == [("big", 2)]
    assert stats.oldest_due == {Priority.LOW: T0 + timedelta(seconds=5)}, "jobs in a line are not counted"


def test_concurrent_claims_of_one_key_start_no_more_than_its_limit(store: JobStore) -> None:
    """Each claim in its own transaction, at once: counted under the key's lock, not read before a write."""
    for n in range(20):
        create(store, new_job(f"c{n}", concurrency_key="k", concurrency_limit=3), T0)
    with ThreadPoolExecutor(max_workers=10) as pool:
        claimed = [job for job in pool.map(lambda n: _claim(store, f"c{n}"), range(20)) if job is not None]
    assert len(claimed) == 3
    assert sum(store.get(f"c{n}").waiting_for is WaitReason.KEY_LIMIT for n in range(20)) == 17  # type: ignore[union-attr]


def test_schedules_are_kept_found_when_due_and_advanced_once(store: JobStore) -> None:
    job = SubmitRequest(type="echo", payload={"a": 1}, priority=Priority.HIGH, labels={"team": "ml"})
    spec = ScheduleSpec(name="nightly", job=job, cron="30 2 * * *", time_zone="Europe/Berlin")
    nightly = Schedule(spec=spec, next_fire_at=T0, created_at=T0, updated_at=T0)
    assert store.create_schedule(nightly) == nightly
    assert store.create_schedule(dataclasses.replace(nightly, next_fire_at=T0 + timedelta(days=1))) == nightly
    ticking = Schedule(
        spec=ScheduleSpec(name="tick", job=SubmitRequest(type="noop"), interval=timedelta(seconds=2)),
        next_fire_at=T0 + timedelta(seconds=2),
        created_at=T0,
        updated_at=T0,
    )
    store.create_schedule(ticking)
    assert [s.name for s in store.list_schedules()] == ["nightly", "tick"]
    assert store.get_schedule("nightly") == nightly and store.get_schedule("none") is None
    assert [s.name for s in store.due_schedules(T0 + timedelta(seconds=1), 10)] == ["nightly"]

    fired = dataclasses.replace(
        nightly, next_fire_at=T0 + timedelta(days=1), last_fire_at=T0, last_job_id="j", fired=1, missed=2
    )
    assert store.advance_schedule(fired, expected_next_fire_at=T0)
    assert not store.advance_schedule(dataclasses.replace(fired, fired=2), expected_next_fire_at=T0)
    assert store.get_schedule("nightly") == fired

    paused = dataclasses.replace(
        fired, spec=dataclasses.replace(spec, paused=True), updated_at=T0 + timedelta(1)
    )
    assert (
        store.update_schedule(dataclasses.replace(paused, fired=99)) == paused
    )  # the firings' record is kept
    assert store.due_schedules(T0 + timedelta(days=2), 10) == [store.get_schedule("tick")]
    assert store.delete_schedule("tick") and not store.delete_schedule("tick")
    assert store.list_schedules() == [paused]


def test_ping_answers(store: JobStore) -> None:
    store.ping()


def test_a_database_that_does_not_answer_is_unavailable() -> None:
    store: SqlJobStore = open_store("postgresql+psycopg://postgres@127.0.0.1:1/none")
    with pytest.raises(StoreUnavailable):
        store.ping()
    with pytest.raises(StoreUnavailable):
        store.get("a")

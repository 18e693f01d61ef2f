"""Healing without a person: lost workers, a database or a broker that goes away, a partition, a stalled
worker, a cancel then a retry. Real processes at default settings (a 30 s lease), no `taskapp reconcile`, and
every count of runs taken from the jobs' own execution record (`recorded`), outside taskapp's SQL."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.servers import OwnPostgres, OwnRedis
from grpc_gateway.v1 import jobs_pb2
from taskapp.faults import AFTER_DELIVERY_BEFORE_RUN
from taskapp.migrate import upgrade
from taskapp.reconcile import MARKER_KEY
from taskapp.store.tables import jobs_table
from tests.helpers import (
    DatabaseProxy,
    ExecutionRecord,
    Stack,
    get,
    metric_total,
    sql_count,
    submit,
    wait_for,
)

MakeStack = Callable[..., Stack]
#: The default lease (TASKAPP_LEASE_SECONDS); a worker stops a run it cannot renew after two thirds of it.
LEASE = 30.0


@pytest.fixture
def record(tmp_path: Path) -> ExecutionRecord:
    return ExecutionRecord(tmp_path / "record")


@pytest.fixture
def hold(tmp_path: Path) -> Iterator[Path]:
    """While this file exists, `recorded` runs hold."""
    path = tmp_path / "hold"
    path.touch()
    yield path
    path.unlink(missing_ok=True)


def submit_many(stack: Stack, payload: dict[str, Any], count: int) -> list[str]:
    request = jobs_pb2.SubmitJobsRequest()
    for _ in range(count):
        job = request.jobs.add(type="recorded")
        job.payload.update(payload)
    return [result.job_id for result in stack.stub().SubmitJobs(request, timeout=60).results]


def succeeded(stack: Stack) -> int:
    return sql_count(stack, jobs_table, jobs_table.c.state == "SUCCEEDED")


@pytest.mark.slow
def test_a_whole_worker_killed_has_its_runs_finished_by_another(
    make_stack: MakeStack, record: ExecutionRecord, hold: Path
) -> None:
    stack = make_stack(concurrency=2)
    ids = [submit(stack, "recorded", record.payload(hold)) for _ in range(2)]
    wait_for(lambda: len(record.runs()) == 2, 30, "both jobs to start")
    stack.kill("worker")  # the main process and its pool processes, as a lost host
    killed = time.monotonic()
    hold.unlink()
    stack.start_worker(name="worker-b")
    for job_id in ids:
        left = LEASE + 15 - (time.monotonic() - killed)
        assert stack.wait_terminal(job_id, timeout=left).state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert record.finished() == dict.fromkeys(ids, 1), "each handler finished once"
    assert [len(record.of(job_id)) for job_id in ids] == [2, 2], "the lost run, then the rescued one"


@pytest.mark.slow
def test_a_message_taken_by_a_worker_lost_before_it_ran_the_job_is_run_by_another_within_a_lease(
    make_stack: MakeStack, record: ExecutionRecord
) -> None:
    """Redis keeps the taken message aside for its taker until the visibility timeout, a day later."""
    stack = make_stack(worker=False)
    stack.start_worker(name="doomed", TASKAPP_FAULT=AFTER_DELIVERY_BEFORE_RUN)
    job_id = submit(stack, "recorded", record.payload())
    doomed = stack.processes["doomed"]
    assert doomed.wait(30) == -signal.SIGKILL, "the worker died as it took the message"
    stack.kill("doomed")  # its pool processes: the rest of the lost host
    lost = time.monotonic()
    stack.start_worker(name="worker-b")
    job = stack.wait_terminal(job_id, timeout=LEASE + 15 - (time.monotonic() - lost))
    assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_SUCCEEDED, 1)
    assert record.finished() == {job_id: 1}
    assert "whose message a lost worker took and never ran" in stack.log("scheduler")


def test_a_pool_process_killed_mid_run_runs_again_after_its_back_off_not_after_the_backlog(
    make_stack: MakeStack, record: ExecutionRecord, hold: Path
) -> None:
    stack = make_stack(concurrency=2)
    victim = submit(stack, "recorded", record.payload(hold))
    [run] = wait_for(record.runs, 30, "the job to start")
    backlog = jobs_pb2.SubmitJobsRequest()
    for _ in range(500):
        backlog.jobs.add(type="sleep").payload.update({"seconds": 0.2})
    stack.stub().SubmitJobs(backlog, timeout=60)
    os.kill(run.pid, signal.SIGKILL)
    killed = time.time()
    hold.unlink()
    again = wait_for(lambda: record.of(victim)[1:], 30, "the job to run again")[0]
    # Attempt 1's back-off is 1 s, stretched by up to a quarter.
    assert again.started - killed <= 1.25 + 5
    waiting = sql_count(stack, jobs_table, jobs_table.c.type == "sleep", jobs_table.c.state == "QUEUED")
    assert waiting > 300, "it did not wait behind the backlog"
    assert stack.wait_terminal(victim).state == jobs_pb2.JOB_STATE_SUCCEEDED


def test_cancel_while_running_then_retry_runs_the_job_and_counts_the_cancel_once(
    make_stack: MakeStack, record: ExecutionRecord, hold: Path
) -> None:
    stack = make_stack()
    job_id = submit(stack, "recorded", record.payload(hold))
    wait_for(record.runs, 30, "the job to start")
    stub = stack.stub()
    assert stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), timeout=10).cancelled
    hold.unlink()
    stub.RetryJob(jobs_pb2.RetryJobRequest(job_id=job_id), timeout=10)
    job = stack.wait_terminal(job_id)
    assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_SUCCEEDED, 1)
    assert record.finished() == {job_id: 1}, "the cancelled run was stopped, the retried one finished"
    counts = [
        metric_total(stack.env[name], "taskapp_jobs_finished_total", state="CANCELLED")
        for name in ("TASKAPP_METRICS_ADDR", "TASKAPP_WORKER_METRICS_ADDR")
    ]
    assert sum(counts) == 1.0, counts


@pytest.mark.slow
def test_postgres_stopped_mid_drain_loses_nothing_and_runs_nothing_twice(
    make_stack: MakeStack, own_postgres: OwnPostgres, record: ExecutionRecord
) -> None:
    upgrade(own_postgres.url)
    stack = make_stack(DATABASE_URL=own_postgres.url)
    ids = submit_many(stack, record.payload(), 1_000)
    wait_for(lambda: sum(record.finished().values()) >= 200, 60, "the drain to be under way")
    own_postgres.stop()
    stopped = time.monotonic()
    wait_for(lambda: "taking no messages" in stack.log("worker"), 30, "the worker to stop taking messages")
    time.sleep(max(0.0, 15 - (time.monotonic() - stopped)))  # the outage lasts 15 s
    own_postgres.start()
    back = time.monotonic()
    wait_for(lambda: succeeded(stack) == 1_000, LEASE + 30, "every job to succeed")
    assert time.monotonic() - back <= LEASE + 30
    assert record.finished() == dict.fromkeys(ids, 1), "each handler finished once"
    log = stack.log("worker")
    assert "Traceback" not in log
    assert log.count("taking no messages") == 1 and "answers again: taking messages" in log


@pytest.mark.slow
def test_runs_that_finish_while_the_database_is_away_wait_past_the_stopping_point_and_keep_their_outcome(
    make_stack: MakeStack, own_postgres: OwnPostgres, record: ExecutionRecord, hold: Path
) -> None:
    """A worker stops a run it could not renew for two thirds of its lease, but not one whose handler has
    returned: its outcome is written once the database answers, within the lease, and the job never runs again."""
    upgrade(own_postgres.url)
    stack = make_stack(DATABASE_URL=own_postgres.url, concurrency=2)
    ids = [submit(stack, "recorded", record.payload(hold)) for _ in range(2)]
    wait_for(lambda: len(record.runs()) == 2, 30, "both jobs to start")
    own_postgres.stop()
    hold.unlink()
    wait_for(
        lambda: stack.log("worker").count("waits for the job database") == 2, 30, "both outcomes to wait"
    )
    wait_for(
        lambda: stack.log("worker").count("not stopped, it waits to write its outcome") == 2,
        LEASE,
        "the worker to pass the point where it stops runs it cannot renew",
    )
    own_postgres.start()
    for job_id in ids:
        job = stack.wait_terminal(job_id, timeout=LEASE)
        assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_SUCCEEDED, 1)
    assert record.finished() == dict.fromkeys(ids, 1), "each handler finished once"
    assert "stopping run" not in stack.log("worker")


@pytest.mark.slow
def test_a_worker_cut_off_from_the_database_stops_its_run_before_its_lease_ends(
    make_stack: MakeStack, record: ExecutionRecord, hold: Path
) -> None:
    stack = make_stack(worker=False)
    database = stack.env["DATABASE_URL"]
    proxy = DatabaseProxy(int(database.rsplit(":", 1)[1].split("/")[0]))
    try:
        stack.start_worker(concurrency=1, name="worker-a", DATABASE_URL=proxy.url_for(database))
        job_id = submit(stack, "recorded", record.payload(hold))
        wait_for(record.runs, 30, "the job to start on worker-a")
        proxy.cut.set()  # worker-a's packets to the database go nowhere from now on
        cut = time.time()
        stack.start_worker(concurrency=1, name="worker-b")
        wait_for(lambda: "stopping run" in stack.log("worker-a"), LEASE, "worker-a to stop its run")
        hold.unlink()
        job = stack.wait_terminal(job_id, timeout=LEASE + 15)
    finally:
        proxy.close()
    assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_SUCCEEDED, 2)
    first, second = record.of(job_id)
    assert not first.finished and second.finished and first.pid != second.pid
    assert first.last_seen < cut + LEASE - 5, "stopped well before its lease could end"
    assert first.last_seen < second.started, "the two runs never overlapped"


@pytest.mark.slow
def test_a_stalled_worker_s_late_outcome_is_refused(
    make_stack: MakeStack, record: ExecutionRecord, hold: Path
) -> None:
    stack = make_stack(worker=False)
    stack.start_worker(concurrency=1, name="worker-a")
    job_id = submit(stack, "recorded", record.payload(hold))
    wait_for(record.runs, 30, "the job to start on worker-a")
    # worker-a's main process stalls (its pool process runs on): nothing renews the lease, nothing stops the run.
    os.kill(stack.processes["worker-a"].pid, signal.SIGSTOP)
    try:
        stack.start_worker(concurrency=1, name="worker-b")
        wait_for(lambda: get(stack, job_id).attempts == 2, LEASE + 15, "the job to be rescued and run again")
        hold.unlink()
        wait_for(lambda: all(run.finished for run in record.of(job_id)), 30, "both runs to finish")
        job = stack.wait_terminal(job_id)
    finally:
        os.kill(stack.processes["worker-a"].pid, signal.SIGCONT)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert job.result.struct_value["attempt"] == 2, "the rescued run's outcome, not the late one's"
    first, _ = record.of(job_id)
    wait_for(
        lambda: "reported its success too late" in stack.log("worker-a"), 30, "worker-a to log the refusal"
    )
    assert first.finished, "the stalled run did finish, and was refused"


def test_redis_restarted_without_its_data_loses_no_job(
    make_stack: MakeStack, own_redis: OwnRedis, record: ExecutionRecord
) -> None:
    stack = make_stack(worker=False, REDIS_URL=own_redis.url)
    broker = redis.Redis.from_url(own_redis.url)
    wait_for(lambda: broker.get(MARKER_KEY), 30, "the active scheduler to have seen the broker")
    ids = submit_many(stack, record.payload(), 1_000)
    own_redis.stop()
    # The worker boots meanwhile, as one that was up would be there when Redis comes back.
    stack.start_worker(ready=False)
    own_redis.start()  # empty: it keeps nothing on disk
    back = time.monotonic()
    try:
        wait_for(lambda: succeeded(stack) == 1_000, 30, "every job to succeed")
    except AssertionError as late:
        said = [
            line for line in stack.log("scheduler").splitlines() if "broker" in line or "reconcile" in line
        ]
        raise AssertionError(f"{succeeded(stack)} of 1,000 SUCCEEDED; the scheduler said: {said}") from late
    assert time.monotonic() - back <= 30
    assert record.finished() == dict.fromkeys(ids, 1), "each handler finished once"
    assert "the broker lost messages" in stack.log("scheduler")

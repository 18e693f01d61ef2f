"""Failure handling end to end: retries with back-off, permanent failures, timeouts, dead letters and RetryJob,
and worker processes dying mid-run — real gateway, worker and Redis."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from grpc_gateway.v1 import jobs_pb2
from taskapp.store.engine import create_db_engine
from taskapp.store.tables import events_table
from tests.helpers import Stack, dead_letters, get, submit, wait_dead_letters, wait_for

MakeStack = Callable[..., Stack]


def events(stack: Stack, job_id: str) -> list[tuple[str, int, datetime]]:
    engine = create_db_engine(stack.env["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(events_table.c.state, events_table.c.attempt, events_table.c.at)
                .where(events_table.c.job_id == job_id)
                .order_by(events_table.c.seq)
            )
            return [(row.state, row.attempt, row.at) for row in rows]
    finally:
        engine.dispose()


def test_retries_back_off_and_then_succeed(make_stack: MakeStack) -> None:
    stack = make_stack()
    job_id = submit(stack, "fail", {"times": 2}, max_attempts=3)

    def retrying_job() -> jobs_pb2.Job | None:
        job = get(stack, job_id)
        return job if job.state == jobs_pb2.JOB_STATE_RETRYING else None

    retrying = wait_for(
        retrying_job,
        20,
        "the job to wait for its next attempt",
        interval=0.02,
    )
    assert "induced failure 1 of 2" in retrying.last_error
    assert retrying.scheduled_at.ToDatetime() > retrying.updated_at.ToDatetime(), "next attempt time shown"
    job = stack.wait_terminal(job_id)
    assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_SUCCEEDED, 3)
    starts = [at for state, _, at in events(stack, job_id) if state == "RUNNING"]
    assert len(starts) == 3
    first_gap, second_gap = starts[1] - starts[0], starts[2] - starts[1]
    assert first_gap.total_seconds() >= 1
    assert second_gap > first_gap, (first_gap, second_gap)


def test_exhausted_retries_dead_letter_and_retry_job_replays(make_stack: MakeStack, tmp_path: Path) -> None:
    stack = make_stack()
    job_id = submit(stack, "fail", {"times": 5}, max_attempts=3)
    job = stack.wait_terminal(job_id)
    assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_DEAD_LETTER, 3)
    assert "induced failure 3 of 5" in job.last_error
    wait_dead_letters(stack, 1)

    replayed = stack.stub().RetryJob(jobs_pb2.RetryJobRequest(job_id=job_id), timeout=10)
    assert (replayed.state, replayed.attempts) == (jobs_pb2.JOB_STATE_QUEUED, 0)
    job = stack.wait_terminal(job_id)
    assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_DEAD_LETTER, 3), "the cause is still there"
    wait_dead_letters(stack, 1)  # replay took it out; the new failure put it back

    gate = tmp_path / "gate"
    gate.touch()
    cured_id = submit(stack, "fail_while_file", {"path": str(gate)}, max_attempts=2)
    assert stack.wait_terminal(cured_id).state == jobs_pb2.JOB_STATE_DEAD_LETTER
    wait_dead_letters(stack, 2)
    gate.unlink()
    stack.stub().RetryJob(jobs_pb2.RetryJobRequest(job_id=cured_id), timeout=10)
    job = stack.wait_terminal(cured_id)
    assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_SUCCEEDED, 1)
    assert job.result.string_value == "gate open"
    wait_dead_letters(stack, 1)


def test_retry_job_refuses_jobs_that_have_not_failed(make_stack: MakeStack) -> None:
    stack = make_stack()
    job_id = submit(stack, "echo", {"a": 1})
    stack.wait_terminal(job_id)
    with pytest.raises(grpc.RpcError) as raised:
        stack.stub().RetryJob(jobs_pb2.RetryJobRequest(job_id=job_id), timeout=10)
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "SUCCEEDED" in raised.value.details()
    with pytest.raises(grpc.RpcError) as raised:
        stack.stub().RetryJob(jobs_pb2.RetryJobRequest(job_id="nobody"), timeout=10)
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


def test_permanent_failure_fails_at_once(make_stack: MakeStack) -> None:
    stack = make_stack()
    job_id = submit(stack, "fail", {"permanent": True}, max_attempts=3)
    job = stack.wait_terminal(job_id)
    assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_FAILED, 1)
    assert "failed permanently" in job.last_error
    assert dead_letters(stack) == 0


def test_timeouts_retry_then_dead_letter(make_stack: MakeStack) -> None:
    stack = make_stack()
    job_id = submit(stack, "sleep", {"seconds": 10}, timeout_seconds=1, max_attempts=3)
    wait_for(lambda: get(stack, job_id).state == jobs_pb2.JOB_STATE_RETRYING, 10, "a retry", interval=0.02)
    job = stack.wait_terminal(job_id, timeout=30)
    assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_DEAD_LETTER, 3), job.last_error
    assert "timeout" in job.last_error and "timeout_seconds (1 s)" in job.last_error
    wait_dead_letters(stack, 1)


@pytest.mark.slow
def test_killed_pool_process_reruns_the_job_20_times_in_a_row(make_stack: MakeStack) -> None:
    stack = make_stack(concurrency=1)
    for _ in range(20):
        job_id = submit(stack, "sleep", {"seconds": 0.5}, max_attempts=3)
        running = (lambda j: lambda: get(stack, j).state == jobs_pb2.JOB_STATE_RUNNING)(job_id)
        wait_for(running, 20, "the run", interval=0.02)
        (child,) = stack.pool_children()
        os.kill(child, signal.SIGKILL)
        job = stack.wait_terminal(job_id, timeout=30)
        assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_SUCCEEDED, 2)
        # Never two runs at once: the lost run ended (RETRYING) before the next one started.
        assert [state for state, _, _ in events(stack, job_id)] == [
            "QUEUED", "RUNNING", "RETRYING", "RUNNING", "SUCCEEDED"
        ]  # fmt: skip


def test_a_job_that_kills_its_worker_every_time_ends_in_the_dead_letters(make_stack: MakeStack) -> None:
    stack = make_stack(concurrency=1)
    job_id = submit(stack, "crash", max_attempts=3)
    job = stack.wait_terminal(job_id, timeout=60)
    assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_DEAD_LETTER, 3)
    assert "worker process lost" in job.last_error
    wait_dead_letters(stack, 1)
    after = submit(stack, "echo", {"still": "alive"})
    assert stack.wait_terminal(after).state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert stack.processes["worker"].poll() is None


def test_a_run_that_ignores_its_timeout_is_killed_and_retried_then_dead_lettered(
    make_stack: MakeStack,
) -> None:
    stack = make_stack(concurrency=1)
    job_id = submit(stack, "stubborn", {"seconds": 60}, timeout_seconds=1, max_attempts=2)

    def killed_and_retrying() -> jobs_pb2.Job | None:
        job = get(stack, job_id)
        return job if job.state == jobs_pb2.JOB_STATE_RETRYING else None

    retrying = wait_for(killed_and_retrying, 30, "the killed run to be retried", interval=0.05)
    assert "ignored its timeout and was killed" in retrying.last_error
    job = stack.wait_terminal(job_id, timeout=60)
    assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_DEAD_LETTER, 2)
    wait_dead_letters(stack, 1)

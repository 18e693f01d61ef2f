"""Seeing jobs: WatchJob, GetJobLogs, progress, GetQueueStats and SubmitJobs through the real
gateway, worker and scheduler."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa

from grpc_gateway.v1 import jobs_pb2, jobs_pb2_grpc
from taskapp.joblogs import MAX_LINES_PER_JOB
from taskapp.store.engine import create_db_engine
from taskapp.store.tables import events_table, jobs_table
from tests.helpers import BIN, Stack, get, sql_count, submit, submit_at, wait_dead_letters, wait_for

MakeStack = Callable[..., Stack]


def grpcurl_stream(stack: Stack, method: str, request: dict) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "grpcurl"), "-plaintext", "-d", json.dumps(request), stack.address, f"taskapp.v1.JobService/{method}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def json_objects(text: str) -> list[dict]:
    """grpcurl prints each streamed message as an indented JSON object."""
    decoder, objects, position = json.JSONDecoder(), [], 0
    text = text.strip()
    while position < len(text):
        value, end = decoder.raw_decode(text, position)
        objects.append(value)
        position = end
        while position < len(text) and text[position].isspace():
            position += 1
    return objects


def event_states(stack: Stack, job_id: str) -> list[str]:
    engine = create_db_engine(stack.env["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            query = (
                sa.select(events_table.c.state)
                .where(events_table.c.job_id == job_id)
                .order_by(events_table.c.seq)
            )
            return list(conn.execute(query).scalars())
    finally:
        engine.dispose()


def test_grpcurl_watch_prints_each_state_in_order_and_exits(make_stack: MakeStack) -> None:
    stack = make_stack()
    job_id = submit(stack, "sleep", {"seconds": 1})
    watch = grpcurl_stream(stack, "WatchJob", {"job_id": job_id})
    out, err = watch.communicate(timeout=30)

    assert watch.returncode == 0, err
    states = [event["state"] for event in json_objects(out)]
    assert states[0] in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING")
    assert states[-2:] == ["JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
    assert len(states) == len(set(states)), states
    assert all(event["job_id"] == job_id for event in json_objects(out))

    after = grpcurl_stream(stack, "WatchJob", {"job_id": job_id})
    out, err = after.communicate(timeout=30)
    assert after.returncode == 0, err
    assert [event["state"] for event in json_objects(out)] == ["JOB_STATE_SUCCEEDED"]


def test_watch_of_an_unknown_job_is_not_found(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False)
    with pytest.raises(grpc.RpcError) as raised:
        list(stack.stub().WatchJob(jobs_pb2.WatchJobRequest(job_id="nobody"), timeout=10))
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


def test_200_concurrent_watchers_each_see_every_transition(make_stack: MakeStack) -> None:
    stack = make_stack()
    job_id = submit_at(stack, "fail", datetime.now(UTC) + timedelta(seconds=3), {"times": 1}, max_attempts=2)

    async def watch_all() -> list[list[str]]:
        async with grpc.aio.insecure_channel(stack.address) as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)

            async def one() -> list[str]:
                stream = stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id), timeout=60)
                return [
                    jobs_pb2.JobState.Name(event.state).removeprefix("JOB_STATE_") async for event in stream
                ]

            return await asyncio.gather(*(one() for _ in range(200)))

    seen = asyncio.run(watch_all())

    expected = event_states(stack, job_id)
    assert expected == ["SCHEDULED", "QUEUED", "RUNNING", "RETRYING", "RUNNING", "SUCCEEDED"]
    assert all(states == expected for states in seen), [s for s in seen if s != expected][:3]


def test_progress_shows_in_watch_events_and_get_job(make_stack: MakeStack) -> None:
    stack = make_stack()
    job_id = submit(stack, "progress", {"steps": [25, 50, 100]})
    events = list(stack.stub().WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id), timeout=30))

    reports = [
        (event.progress_percent, event.message) for event in events if event.HasField("progress_percent")
    ]
    assert reports == [(25, "step 25"), (50, "step 50"), (100, "step 100")]
    assert events[-1].state == jobs_pb2.JOB_STATE_SUCCEEDED
    job = get(stack, job_id)
    assert (job.progress_percent, job.progress_message) == (100, "step 100")


def test_logs_are_kept_per_attempt_in_order(make_stack: MakeStack) -> None:
    stack = make_stack()
    job_id = submit(stack, "chatty", {"lines": 3, "fail_times": 1}, max_attempts=2)
    assert stack.wait_terminal(job_id).state == jobs_pb2.JOB_STATE_SUCCEEDED

    reply = stack.stub().GetJobLogs(jobs_pb2.GetJobLogsRequest(job_id=job_id), timeout=10)

    assert [(line.attempt, line.level, line.message) for line in reply.lines] == [
        (attempt, "INFO", f"line {n} of attempt {attempt}") for attempt in (1, 2) for n in (1, 2, 3)
    ]
    times = [line.at.ToDatetime() for line in reply.lines]
    assert times == sorted(times)


def test_a_million_log_lines_stay_within_the_cap(make_stack: MakeStack) -> None:
    stack = make_stack()
    job_id = submit(stack, "chatty", {"lines": 1_000_000}, timeout_seconds=120)
    assert stack.wait_terminal(job_id, timeout=120).state == jobs_pb2.JOB_STATE_SUCCEEDED

    lines = stack.stub().GetJobLogs(jobs_pb2.GetJobLogsRequest(job_id=job_id), timeout=10).lines

    assert len(lines) == MAX_LINES_PER_JOB + 1
    assert lines[MAX_LINES_PER_JOB - 1].message == f"line {MAX_LINES_PER_JOB} of attempt 1"
    assert (lines[-1].level, lines[-1].message) == (
        "WARNING",
        f"log cap reached: {1_000_000 - MAX_LINES_PER_JOB} line(s) of this attempt dropped",
    )
    assert stack.log("worker").count("of attempt 1") <= MAX_LINES_PER_JOB, (
        "dropped lines skip the worker log too"
    )


def test_logs_of_an_unknown_job_are_not_found(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False)
    with pytest.raises(grpc.RpcError) as raised:
        stack.stub().GetJobLogs(jobs_pb2.GetJobLogsRequest(job_id="nobody"), timeout=10)
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


def stats(stack: Stack) -> jobs_pb2.GetQueueStatsResponse:
    return stack.stub().GetQueueStats(jobs_pb2.GetQueueStatsRequest(), timeout=10)


def test_queue_stats_count_each_priority_the_dead_letters_scheduled_jobs_and_workers(
    make_stack: MakeStack,
) -> None:
    stack = make_stack(worker=False)
    enqueued = {"PRIORITY_LOW": 3, "PRIORITY_DEFAULT": 4, "PRIORITY_HIGH": 2, "PRIORITY_CRITICAL": 1}
    for priority, count in enqueued.items():
        for _ in range(count):
            submit(stack, "noop", priority=jobs_pb2.Priority.Value(priority))
    submit_at(stack, "noop", datetime.now(UTC) + timedelta(days=1))
    submit(stack, "fail", {"times": 5}, max_attempts=1)

    before = stats(stack)
    depths = {jobs_pb2.Priority.Name(queue.priority): queue.depth for queue in before.queues}
    assert depths == {**enqueued, "PRIORITY_DEFAULT": 5}, "the failing job waits in default too"
    assert [queue.queue for queue in before.queues] == ["critical", "high", "default", "low"]
    assert (before.scheduled, before.dead_letter, list(before.workers)) == (1, 0, [])

    stack.start_worker()
    wait_for(
        lambda: sql_count(stack, jobs_table, jobs_table.c.state == "SUCCEEDED") == 10, 30, "the jobs to run"
    )
    wait_dead_letters(stack, 1)
    after = stats(stack)
    assert [queue.depth for queue in after.queues] == [0, 0, 0, 0]
    assert (after.scheduled, after.dead_letter, len(after.workers)) == (1, 1, 1)


def test_submit_jobs_writes_and_runs_a_thousand(make_stack: MakeStack) -> None:
    stack = make_stack()
    request = jobs_pb2.SubmitJobsRequest(
        jobs=[jobs_pb2.SubmitJobRequest(job_id=f"batch-{n}", type="noop") for n in range(1000)]
    )
    reply = stack.stub().SubmitJobs(request, timeout=60)

    assert [result.job_id for result in reply.results] == [f"batch-{n}" for n in range(1000)]
    assert all(result.created and result.state == jobs_pb2.JOB_STATE_QUEUED for result in reply.results)
    assert sql_count(stack, jobs_table) == 1000
    wait_for(
        lambda: sql_count(stack, jobs_table, jobs_table.c.state == "SUCCEEDED") == 1000,
        120,
        "all 1,000 to run",
    )
    again = stack.stub().SubmitJobs(request, timeout=60)
    assert not any(result.created for result in again.results), "idempotent per job"


def test_submit_jobs_with_one_invalid_job_writes_nothing(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False)
    jobs = [jobs_pb2.SubmitJobRequest(type="noop") for _ in range(1000)]
    jobs[500] = jobs_pb2.SubmitJobRequest(type="sleep")  # its payload lacks `seconds`
    with pytest.raises(grpc.RpcError) as raised:
        stack.stub().SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=jobs), timeout=60)

    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("jobs[500].payload.seconds")
    assert sql_count(stack, jobs_table) == 0
    assert get_depth(stack) == 0


def get_depth(stack: Stack) -> int:
    return sum(queue.depth for queue in stats(stack).queues)

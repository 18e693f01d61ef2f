"""Issue "Seeing jobs": the Python clients, `JobClient` and `AsyncJobClient`, against the real gateway and worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from grpc_gateway.client import AsyncJobClient, Cancelled, JobClient, JobServiceError, JobSpec, Submitted
from taskapp.jobs import Job, JobEvent, JobPage, JobState, LogLine, Priority, QueueStats
from tests.helpers import Stack, free_port, wait_for
from tests.loopback import Reply, scripted_http_server

MakeStack = Callable[..., Stack]


def wait_state(client: JobClient, job_id: str, state: JobState, timeout: float = 30) -> Job:
    def reached() -> Job | None:
        job = client.get(job_id)
        return job if job.state is state else None

    return wait_for(reached, timeout, f"job {job_id} to be {state}")


def test_sync_client_round_trip(make_stack: MakeStack, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = make_stack()
    monkeypatch.setenv("TASKAPP_ADDRESS", stack.address)
    later = datetime.now(UTC) + timedelta(hours=1)
    payload = {"n": 1, "tags": ["a", "b"], "nested": {"ok": True}}

    def submit_it(client: JobClient) -> Submitted:
        return client.submit(
            "echo",
            payload,
            job_id="client-1",
            priority=Priority.HIGH,
            max_attempts=2,
            timeout_seconds=30,
            run_at=later,
        )

    with JobClient() as client:
        assert client.address == stack.address
        assert submit_it(client) == Submitted(job_id="client-1", state=JobState.SCHEDULED, created=True)
        assert submit_it(client) == Submitted(job_id="client-1", state=JobState.SCHEDULED, created=False)

        job = client.get("client-1")
        assert isinstance(job, Job)
        assert (job.type, job.priority, job.state, job.payload) == (
            "echo",
            Priority.HIGH,
            JobState.SCHEDULED,
            payload,
        )
        assert (job.attempts, job.max_attempts, job.timeout_seconds) == (0, 2, 30)
        assert abs(job.scheduled_at - later) < timedelta(seconds=1)
        assert job.created_at.tzinfo is not None and job.started_at is None

        assert client.cancel("client-1") == Cancelled(cancelled=True, state=JobState.CANCELLED)
        retried = client.retry("client-1")
        assert (retried.state, retried.attempts) == (JobState.QUEUED, 0)
        done = wait_state(client, "client-1", JobState.SUCCEEDED)
        assert (done.result, done.attempts) == (payload, 1)
        assert done.worker.startswith("celery@")
        assert client.cancel("client-1") == Cancelled(cancelled=False, state=JobState.SUCCEEDED)

        first = client.submit("noop", job_id="noop-1")
        second = client.submit("noop", job_id="noop-2", priority=Priority.LOW)
        assert {first.state, second.state} <= {JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED}
        page = client.list(type="noop", page_size=1)
        assert isinstance(page, JobPage)
        assert [job.job_id for job in page.jobs] == ["noop-2"] and page.next_page_token
        rest = client.list(type="noop", page_size=1, page_token=page.next_page_token)
        assert [job.job_id for job in rest.jobs] == ["noop-1"]
        assert [job.job_id for job in client.list(priority=Priority.LOW).jobs] == ["noop-2"]
        assert [job.job_id for job in client.list(state=JobState.SUCCEEDED, type="echo").jobs] == ["client-1"]


@pytest.fixture
def local_time_zone_utc_plus_0530() -> Iterator[None]:
    """This process's local time 5 h 30 ahead of UTC, so a naive time read as UTC would be off by that."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "TEST-05:30")
        time.tzset()
        yield
    time.tzset()


@pytest.mark.usefixtures("local_time_zone_utc_plus_0530")
def test_a_naive_run_at_is_local_time(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False)
    in_an_hour = (datetime.now() + timedelta(hours=1)).replace(microsecond=0)
    assert in_an_hour.tzinfo is None and in_an_hour.astimezone().utcoffset() == timedelta(hours=5, minutes=30)
    with JobClient(stack.address) as client:
        job_id = client.submit("noop", run_at=in_an_hour).job_id
        job = client.get(job_id)
    assert job.state is JobState.SCHEDULED
    assert job.scheduled_at == in_an_hour.astimezone(UTC)


def test_sync_client_errors(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False)
    with JobClient(stack.address) as client:
        for call in (client.get, client.cancel, client.retry):
            with pytest.raises(JobServiceError) as raised:
                call("no-such-job")
            assert (raised.value.code, raised.value.message) == ("NOT_FOUND", "job 'no-such-job' not found")
            assert str(raised.value) == "NOT_FOUND: job 'no-such-job' not found"

        with pytest.raises(JobServiceError) as raised:
            client.submit("no-such-type")
        assert raised.value.code == "INVALID_ARGUMENT" and "type" in raised.value.message

        client.submit("echo", {"order": 42}, job_id="order-42")
        with pytest.raises(JobServiceError) as raised:
            client.submit("echo", {"order": 43}, job_id="order-42")
        assert raised.value.code == "ALREADY_EXISTS"
        with pytest.raises(JobServiceError) as raised:
            client.retry("order-42")
        assert raised.value.code == "FAILED_PRECONDITION"


def test_unreachable_gateway_is_unavailable() -> None:
    address = f"127.0.0.1:{free_port()}"
    with JobClient(address, timeout=5) as client, pytest.raises(JobServiceError) as raised:
        client.get("any")
    assert raised.value.code == "UNAVAILABLE" and raised.value.message

    async def main() -> JobServiceError:
        async with AsyncJobClient(address, timeout=5) as client:
            with pytest.raises(JobServiceError) as raised:
                await client.get("any")
            return raised.value

    assert asyncio.run(main()).code == "UNAVAILABLE"


def test_async_client_round_trip(make_stack: MakeStack) -> None:
    stack = make_stack()

    async def main() -> None:
        async with AsyncJobClient(stack.address) as client:
            submitted = await client.submit(
                "echo", {"x": "y"}, job_id="async-1", run_at=datetime.now(UTC) + timedelta(hours=1)
            )
            assert submitted == Submitted(job_id="async-1", state=JobState.SCHEDULED, created=True)
            job = await client.get("async-1")
            assert (job.job_id, job.state, job.payload) == ("async-1", JobState.SCHEDULED, {"x": "y"})
            assert await client.cancel("async-1") == Cancelled(cancelled=True, state=JobState.CANCELLED)
            assert (await client.retry("async-1")).state is JobState.QUEUED
            page = await client.list(type="echo")
            assert [job.job_id for job in page.jobs] == ["async-1"] and page.next_page_token == ""
            with pytest.raises(JobServiceError) as raised:
                await client.get("no-such-job")
            assert raised.value.code == "NOT_FOUND"

    asyncio.run(main())
    with JobClient(stack.address) as client:
        assert wait_state(client, "async-1", JobState.SUCCEEDED).result == {"x": "y"}


# The tests below need SubmitJobs, WatchJob, GetJobLogs and GetQueueStats on the gateway.


def test_watch_streams_each_state_until_the_job_ends(make_stack: MakeStack) -> None:
    stack = make_stack()
    with JobClient(stack.address) as client:
        job_id = client.submit("sleep", {"seconds": 2}).job_id
        events = list(client.watch(job_id, timeout=60))

        assert all(isinstance(event, JobEvent) and event.job_id == job_id for event in events)
        # `sleep` reports its progress each second: RUNNING events with a percent, between its changes of state.
        progress = [event for event in events if event.progress_percent is not None]
        assert progress and all(event.state is JobState.RUNNING for event in progress)
        events = [event for event in events if event.progress_percent is None]
        states = [event.state for event in events]
        # The first event is the state the job was in when the watch began.
        assert (
            len(states) >= 2
            and states == [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED][-len(states) :]
        )
        running = events[states.index(JobState.RUNNING)]
        assert running.attempt == 1
        assert [event.at for event in events] == sorted(event.at for event in events)

        # A finished job's watch is its final state alone.
        assert [event.state for event in client.watch(job_id, timeout=30)] == [JobState.SUCCEEDED]
        with pytest.raises(JobServiceError) as raised:
            list(client.watch("no-such-job", timeout=30))
        assert raised.value.code == "NOT_FOUND"


def test_async_watch_of_a_failing_job(make_stack: MakeStack) -> None:
    stack = make_stack()

    async def main() -> list[JobEvent]:
        async with AsyncJobClient(stack.address) as client:
            job_id = (await client.submit("fail", {"permanent": True})).job_id
            return [event async for event in client.watch(job_id, timeout=60)]

    events = asyncio.run(main())
    assert events[-1].state is JobState.FAILED
    assert "failed permanently" in events[-1].message
    assert not any(event.state.is_terminal for event in events[:-1])


def test_submit_many(make_stack: MakeStack) -> None:
    stack = make_stack()
    specs = [
        JobSpec("echo", {"i": 0}, job_id="batch-0"),
        JobSpec("noop", job_id="batch-1", priority=Priority.CRITICAL),
        JobSpec("echo", {"i": 2}, job_id="batch-2", run_at=datetime.now(UTC) + timedelta(hours=1)),
    ]
    with JobClient(stack.address) as client:
        results = client.submit_many(specs)
        assert [result.job_id for result in results] == ["batch-0", "batch-1", "batch-2"]
        assert all(result.created for result in results)
        assert results[2].state is JobState.SCHEDULED
        assert wait_state(client, "batch-0", JobState.SUCCEEDED).result == {"i": 0}
        assert client.get("batch-1").priority is Priority.CRITICAL

        assert [result.created for result in client.submit_many(specs)] == [False, False, False]

        with pytest.raises(JobServiceError) as raised:
            client.submit_many([JobSpec("echo", job_id="batch-ok"), JobSpec("no-such-type")])
        assert raised.value.code == "INVALID_ARGUMENT" and "jobs[1].type" in raised.value.message
        with pytest.raises(JobServiceError) as raised:
            client.get("batch-ok")
        assert raised.value.code == "NOT_FOUND"

    async def main() -> list[Submitted]:
        async with AsyncJobClient(stack.address) as client:
            return await client.submit_many([JobSpec("noop", job_id="batch-async")])

    assert asyncio.run(main()) == [Submitted(job_id="batch-async", state=JobState.QUEUED, created=True)]


def test_logs_are_per_attempt_oldest_first(make_stack: MakeStack) -> None:
    stack = make_stack()
    with scripted_http_server() as server, JobClient(stack.address) as client:
        server.script(Reply(500, b"down"), Reply(200, b"ok"))
        job_id = client.submit("http_call", {"url": server.url()}, max_attempts=2).job_id
        wait_state(client, job_id, JobState.SUCCEEDED)

        lines = client.logs(job_id)
        assert all(isinstance(line, LogLine) for line in lines)
        # http_call logs "<method> <host>[:<port>]<path> answered <status>" for each attempt.
        answers = [
            (line.attempt, line.level, line.message.split()[-2:])
            for line in lines
            if "answered" in line.message
        ]
        assert answers == [(1, "INFO", ["answered", "500"]), (2, "INFO", ["answered", "200"])]
        assert [line.at for line in lines] == sorted(line.at for line in lines)

        async def main() -> list[LogLine]:
            async with AsyncJobClient(stack.address) as aclient:
                return await aclient.logs(job_id)

        assert asyncio.run(main()) == lines
        with pytest.raises(JobServiceError) as raised:
            client.logs("no-such-job")
        assert raised.value.code == "NOT_FOUND"


def test_stats(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False)
    with JobClient(stack.address) as client:
        client.submit("noop", priority=Priority.LOW)
        client.submit("noop", priority=Priority.LOW)
        client.submit("noop", priority=Priority.CRITICAL)
        client.submit("noop", run_at=datetime.now(UTC) + timedelta(hours=1))

        stats = client.stats()
        assert isinstance(stats, QueueStats)
        assert list(stats.depths.items()) == [
            (Priority.CRITICAL, 1),
            (Priority.HIGH, 0),
            (Priority.DEFAULT, 0),
            (Priority.LOW, 2),
        ]
        assert (stats.scheduled, stats.dead_letter, stats.workers) == (1, 0, [])

        stack.start_worker()

        def drained() -> QueueStats | None:
            stats = client.stats()
            return stats if stats.workers and not any(stats.depths.values()) else None

        settled = wait_for(drained, 60, "the worker to answer and drain the queues")
        assert isinstance(settled, QueueStats)
        assert len(settled.workers) == 1 and settled.workers[0].startswith("celery@")

    async def main() -> QueueStats:
        async with AsyncJobClient(stack.address) as aclient:
            return await aclient.stats()

    assert asyncio.run(main()).scheduled == 1

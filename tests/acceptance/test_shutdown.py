"""Shutdown: SIGTERM stops a worker or the gateway cleanly — running jobs finish (within a bound),
in-flight calls are answered, and nothing is left RUNNING or half-created."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import grpc

from grpc_gateway.v1 import jobs_pb2, jobs_pb2_grpc
from taskapp.store.tables import events_table, jobs_table
from tests.helpers import Stack, get, sql_count, stored_job_ids, submit, wait_for

MakeStack = Callable[..., Stack]


def terminate_worker_as_honcho_does(stack: Stack) -> int:
    """SIGTERM to the worker's whole process group, pool processes included; returns the exit code."""
    worker = stack.processes.pop("worker")
    os.killpg(worker.pid, signal.SIGTERM)
    return worker.wait(30)


def test_sigterm_lets_a_running_job_finish_then_the_worker_exits(make_stack: MakeStack) -> None:
    stack = make_stack(TASKAPP_WORKER_SHUTDOWN_TIMEOUT="30")
    job_id = submit(stack, "sleep", {"seconds": 2})
    wait_for(lambda: get(stack, job_id).state == jobs_pb2.JOB_STATE_RUNNING, 10, "the run", interval=0.02)

    assert terminate_worker_as_honcho_does(stack) == 0

    job = get(stack, job_id)
    assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_SUCCEEDED, 1)


def test_a_job_still_running_at_the_shutdown_bound_goes_back_to_the_queue(make_stack: MakeStack) -> None:
    stack = make_stack(TASKAPP_WORKER_SHUTDOWN_TIMEOUT="1")
    job_id = submit(stack, "sleep", {"seconds": 4}, max_attempts=1)
    wait_for(lambda: get(stack, job_id).state == jobs_pb2.JOB_STATE_RUNNING, 10, "the run", interval=0.02)

    terminate_worker_as_honcho_does(stack)

    job = get(stack, job_id)
    assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_QUEUED, 0), "not left RUNNING, attempt not spent"
    assert "returning 1 running job(s) to the queue" in stack.log("worker")
    stack.start_worker()
    job = stack.wait_terminal(job_id, timeout=30)
    assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_SUCCEEDED, 1)


def test_sigterm_to_the_gateway_answers_or_refuses_each_of_2000_submits_cleanly(
    make_stack: MakeStack,
) -> None:
    """50 calls in flight at all times; SIGTERM once 100 have been answered. Each refusal is followed by the
    next call at once, so callers keep knocking for well over the half second of the gateway's lull: none may
    be cut off (CANCELLED) when the server stops."""
    stack = make_stack()
    ids = [f"inflight-{n}" for n in range(2000)]
    outcomes: dict[str, grpc.StatusCode] = {}

    async def submit_all() -> None:
        async with grpc.aio.insecure_channel(stack.address) as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)

            in_flight = asyncio.Semaphore(50)

            async def one(job_id: str) -> None:
                async with in_flight:
                    try:
                        request = jobs_pb2.SubmitJobRequest(job_id=job_id, type="noop")
                        await stub.SubmitJob(request, timeout=30)
                        outcomes[job_id] = grpc.StatusCode.OK
                    except grpc.aio.AioRpcError as error:
                        outcomes[job_id] = error.code()

            async def terminate_midway() -> None:
                while len(outcomes) < 100:
                    await asyncio.sleep(0.005)
                os.kill(stack.processes["gateway"].pid, signal.SIGTERM)

            await asyncio.gather(terminate_midway(), *(one(job_id) for job_id in ids))

    asyncio.run(submit_all())
    assert stack.processes.pop("gateway").wait(30) == 0

    answered = {job_id for job_id, code in outcomes.items() if code is grpc.StatusCode.OK}
    refused = {job_id: code for job_id, code in outcomes.items() if code is not grpc.StatusCode.OK}
    assert len(answered) >= 100 and refused, (len(answered), len(refused))
    assert set(refused.values()) == {grpc.StatusCode.UNAVAILABLE}
    assert stored_job_ids(stack.env["DATABASE_URL"]) == answered, (
        "every answered submit has its job, and no refused one does"
    )
    wait_for(
        lambda: sql_count(stack, jobs_table, jobs_table.c.state == "SUCCEEDED") == len(answered),
        60,
        "every answered job to run",
    )
    assert sql_count(stack, events_table, events_table.c.state == "RUNNING") == len(answered)

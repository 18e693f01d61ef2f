"""The job API end to end: grpcurl and the Python stubs against the Procfile processes (docs/api.md)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from celery import Celery
from google.protobuf import struct_pb2

from grpc_gateway.v1 import jobs_pb2
from taskapp.store.tables import events_table, jobs_table
from tests.helpers import Stack, get, sql_count, submit, wait_for

MakeStack = Callable[..., Stack]


def test_grpcurl_lists_the_job_and_health_services(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False)
    services = stack.grpcurl(stack.address, "list").stdout.split()
    assert "taskapp.v1.JobService" in services
    assert "grpc.health.v1.Health" in services
    methods = stack.grpcurl(stack.address, "list", "taskapp.v1.JobService").stdout.split()
    assert set(methods) == {
        f"taskapp.v1.JobService.{m}"
        for m in (
            *("SubmitJob", "GetJob", "CancelJob", "ListJobs", "RetryJob"),
            *("SubmitJobs", "WatchJob", "GetJobLogs", "GetQueueStats", "CancelJobs", "RetryJobs"),
            *("CreateSchedule", "UpdateSchedule", "GetSchedule", "ListSchedules", "PauseSchedule"),
            *("ResumeSchedule", "DeleteSchedule", "TriggerSchedule"),
            *("SetTypeLimit", "SetKeyRate", "PauseType", "ResumeType", "PauseQueue", "ResumeQueue"),
            *("GetFlowControls", "ExplainJob"),
        )
    }


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_echo_job_round_trip_through_grpcurl(make_stack: MakeStack, backend: str) -> None:
    stack = make_stack(backend=backend)
    payload = {"greeting": "hello", "n": 3, "nested": {"ok": True, "list": [1, "two"]}}
    submitted = json.loads(
        stack.grpcurl(
            "-d",
            json.dumps({"type": "echo", "payload": payload}),
            stack.address,
            "taskapp.v1.JobService/SubmitJob",
        ).stdout
    )
    assert submitted["created"] is True and submitted["state"] == "JOB_STATE_QUEUED"
    stack.wait_terminal(submitted["job_id"])
    job = json.loads(
        stack.grpcurl(
            "-d", json.dumps({"job_id": submitted["job_id"]}), stack.address, "taskapp.v1.JobService/GetJob"
        ).stdout
    )
    assert job["state"] == "JOB_STATE_SUCCEEDED"
    assert job["attempts"] == 1
    assert job["result"] == payload
    assert job["payload"] == payload
    assert job["worker"].startswith("celery@")
    for stamp in ("created_at", "updated_at", "scheduled_at", "started_at", "finished_at"):
        assert job[stamp].endswith("Z"), stamp
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]


def test_idempotent_submit(make_stack: MakeStack) -> None:
    stack = make_stack()
    stub = stack.stub()
    request = jobs_pb2.SubmitJobRequest(job_id="order-42", type="echo", priority=jobs_pb2.PRIORITY_HIGH)
    request.payload.update({"order": 42})
    first = stub.SubmitJob(request, timeout=10)
    again = stub.SubmitJob(request, timeout=10)
    assert (first.created, again.created, again.job_id) == (True, False, "order-42")

    different = jobs_pb2.SubmitJobRequest(job_id="order-42", type="echo")
    different.payload.update({"order": 43})
    with pytest.raises(grpc.RpcError) as raised:
        stub.SubmitJob(different, timeout=10)
    assert raised.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert "job_id" in raised.value.details()
    assert stack.wait_terminal("order-42").result.struct_value["order"] == 42


def test_200_concurrent_submits_of_one_id_make_one_job_and_one_run(make_stack: MakeStack) -> None:
    stack = make_stack()
    stub = stack.stub()
    request = jobs_pb2.SubmitJobRequest(job_id="hot-key", type="echo")
    request.payload.update({"x": 1})
    with ThreadPoolExecutor(max_workers=200) as pool:
        replies = list(pool.map(lambda _: stub.SubmitJob(request, timeout=30), range(200)))
    assert sum(reply.created for reply in replies) == 1
    assert {reply.job_id for reply in replies} == {"hot-key"}
    job = stack.wait_terminal("hot-key")
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED and job.attempts == 1
    assert sql_count(stack, jobs_table, jobs_table.c.job_id == "hot-key") == 1
    runs = sql_count(
        stack, events_table, events_table.c.job_id == "hot-key", events_table.c.state == "RUNNING"
    )
    assert runs == 1


def test_the_gateway_and_each_worker_process_freeze_their_start_up_objects(make_stack: MakeStack) -> None:
    """taskapp.gc_pauses: a full collection must not walk the ~150,000 objects each process has once up."""
    stack = make_stack(concurrency=2)
    frozen = re.compile(
        r"(gateway|worker main process|worker pool process): (\d+) objects from start-up frozen"
    )

    def freezes() -> list[tuple[str, int]]:
        logs = stack.log("gateway") + stack.log("worker")
        return [(process, int(count)) for process, count in frozen.findall(logs)]

    wait_for(lambda: len(freezes()) == 4, 30, "the gateway and the worker's three processes to freeze")
    assert sorted(process for process, _ in freezes()) == [
        "gateway",
        "worker main process",
        "worker pool process",
        "worker pool process",
    ]
    assert all(count > 20_000 for _, count in freezes()), freezes()


def test_critical_jobs_run_before_low_ones(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False)
    low = [submit(stack, "noop", priority=jobs_pb2.PRIORITY_LOW) for _ in range(20)]
    critical = [submit(stack, "noop", priority=jobs_pb2.PRIORITY_CRITICAL) for _ in range(20)]
    stack.start_worker(concurrency=1)
    jobs = {job_id: stack.wait_terminal(job_id, timeout=60) for job_id in low + critical}
    assert all(job.state == jobs_pb2.JOB_STATE_SUCCEEDED for job in jobs.values())
    last_critical = max(jobs[j].started_at.ToDatetime() for j in critical)
    first_low = min(jobs[j].started_at.ToDatetime() for j in low)
    assert last_critical < first_low


def test_cancel_queued_job_never_runs(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False)
    job_id = submit(stack, "echo", {"secret": "never echoed"})
    reply = stack.stub().CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), timeout=10)
    assert reply.cancelled and reply.state == jobs_pb2.JOB_STATE_CANCELLED
    # The cancelled message is still in the broker (default queue, ahead of the low-priority marker).
    stack.start_worker(concurrency=1)
    marker = submit(stack, "noop", priority=jobs_pb2.PRIORITY_LOW)
    assert stack.wait_terminal(marker).state == jobs_pb2.JOB_STATE_SUCCEEDED
    job = get(stack, job_id)
    assert job.state == jobs_pb2.JOB_STATE_CANCELLED
    assert job.attempts == 0 and not job.HasField("started_at") and not job.HasField("result")
    assert f"job {job_id} is not claimable" in stack.log("worker")


def test_cancel_running_job_terminates_it_and_the_worker_goes_on(make_stack: MakeStack) -> None:
    stack = make_stack(concurrency=1)
    job_id = submit(stack, "sleep", {"seconds": 60})
    wait_for(lambda: get(stack, job_id).state == jobs_pb2.JOB_STATE_RUNNING, 20, "the sleep job to run")
    cancelled_at = time.monotonic()
    reply = stack.stub().CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), timeout=10)
    assert reply.cancelled and reply.state == jobs_pb2.JOB_STATE_CANCELLED
    # One worker process: the next job can only run once the sleep was really stopped.
    after = submit(stack, "echo", {"next": True})
    assert stack.wait_terminal(after, timeout=5).state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert time.monotonic() - cancelled_at < 5
    job = get(stack, job_id)
    assert job.state == jobs_pb2.JOB_STATE_CANCELLED and not job.HasField("result")


def test_cancel_finished_job_answers_false(make_stack: MakeStack) -> None:
    stack = make_stack()
    job_id = submit(stack, "echo", {"a": 1})
    stack.wait_terminal(job_id)
    reply = stack.stub().CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), timeout=10)
    assert not reply.cancelled and reply.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert get(stack, job_id).state == jobs_pb2.JOB_STATE_SUCCEEDED


def _submit_request(**fields: Any) -> jobs_pb2.SubmitJobRequest:
    payload = fields.pop("payload", None)
    request = jobs_pb2.SubmitJobRequest(**fields)
    if payload is not None:
        request.payload.update(payload)
    return request


INVALID_SUBMITS: list[tuple[dict[str, Any], grpc.StatusCode, str]] = [
    ({"type": ""}, grpc.StatusCode.INVALID_ARGUMENT, "type"),
    ({"type": "nope"}, grpc.StatusCode.INVALID_ARGUMENT, "type"),
    ({"type": "echo", "job_id": "bad id!"}, grpc.StatusCode.INVALID_ARGUMENT, "job_id"),
    ({"type": "echo", "job_id": "x" * 129}, grpc.StatusCode.INVALID_ARGUMENT, "job_id"),
    ({"type": "echo", "priority": 99}, grpc.StatusCode.INVALID_ARGUMENT, "priority"),
    ({"type": "sleep", "payload": {"seconds": "later"}}, grpc.StatusCode.INVALID_ARGUMENT, "payload.seconds"),
    ({"type": "sleep", "payload": {"seconds": -1}}, grpc.StatusCode.INVALID_ARGUMENT, "payload.seconds"),
    (
        {"type": "fail", "payload": {"times": 1, "surprise": 1}},
        grpc.StatusCode.INVALID_ARGUMENT,
        "payload.surprise",
    ),
    ({"type": "echo", "max_attempts": 0}, grpc.StatusCode.INVALID_ARGUMENT, "max_attempts"),
    ({"type": "echo", "max_attempts": 101}, grpc.StatusCode.INVALID_ARGUMENT, "max_attempts"),
    ({"type": "echo", "max_attempts": -5}, grpc.StatusCode.INVALID_ARGUMENT, "max_attempts"),
    ({"type": "echo", "timeout_seconds": 0}, grpc.StatusCode.INVALID_ARGUMENT, "timeout_seconds"),
    ({"type": "echo", "timeout_seconds": 86_401}, grpc.StatusCode.INVALID_ARGUMENT, "timeout_seconds"),
    ({"type": "echo", "payload": {"blob": "x" * 262_144}}, grpc.StatusCode.RESOURCE_EXHAUSTED, "payload"),
]


def test_every_invalid_input_gets_its_status_and_leaves_no_row(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False)
    stub = stack.stub()
    for fields, code, field in INVALID_SUBMITS:
        with pytest.raises(grpc.RpcError) as raised:
            stub.SubmitJob(_submit_request(**dict(fields)), timeout=10)
        assert raised.value.code() is code, fields
        assert raised.value.details().startswith(field), (fields, raised.value.details())

    for call, request in [
        (stub.GetJob, jobs_pb2.GetJobRequest(job_id="")),
        (stub.GetJob, jobs_pb2.GetJobRequest(job_id="no spaces allowed")),
        (stub.CancelJob, jobs_pb2.CancelJobRequest(job_id="x" * 200)),
        (stub.ListJobs, jobs_pb2.ListJobsRequest(page_size=-1)),
        (stub.ListJobs, jobs_pb2.ListJobsRequest(page_token="not-a-token")),
        # Enum numbers no client library would send (proto3 enums are open): the stubs' types forbid them.
        (stub.ListJobs, jobs_pb2.ListJobsRequest(state=42)),  # type: ignore[arg-type]
        (stub.ListJobs, jobs_pb2.ListJobsRequest(priority=-3)),  # type: ignore[arg-type]
    ]:
        with pytest.raises(grpc.RpcError) as raised:
            call(request, timeout=10)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT, request

    for call, request in [
        (stub.GetJob, jobs_pb2.GetJobRequest(job_id="unknown-job")),
        (stub.CancelJob, jobs_pb2.CancelJobRequest(job_id="unknown-job")),
    ]:
        with pytest.raises(grpc.RpcError) as raised:
            call(request, timeout=10)
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND
        assert "unknown-job" in raised.value.details()

    # grpcurl users see the same: the field in the message, the documented code.
    result = stack.grpcurl(
        "-d",
        '{"type": "sleep", "payload": {"seconds": "soon"}}',
        stack.address,
        "taskapp.v1.JobService/SubmitJob",
        check=False,
    )
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr and "payload.seconds" in result.stderr

    assert sql_count(stack, jobs_table) == 0
    assert sql_count(stack, events_table) == 0


def list_all(stack: Stack, page_size: int, **filters: Any) -> tuple[list[str], int]:
    stub = stack.stub()
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = stub.ListJobs(
            jobs_pb2.ListJobsRequest(page_size=page_size, page_token=token, **filters), timeout=10
        )
        pages += 1
        seen += [job.job_id for job in page.jobs]
        if not page.next_page_token:
            return seen, pages
        token = page.next_page_token


def test_list_jobs_filters_and_pages(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False)
    priorities = [
        jobs_pb2.PRIORITY_LOW,
        jobs_pb2.PRIORITY_DEFAULT,
        jobs_pb2.PRIORITY_HIGH,
        jobs_pb2.PRIORITY_CRITICAL,
    ]
    submitted: list[tuple[str, str, int]] = []
    for i in range(120):
        type = "noop" if i % 3 else "echo"
        priority = priorities[i % 4]
        submitted.append((submit(stack, type, priority=priority), type, priority))
    cancelled = {job_id for job_id, _, _ in submitted[::10]}
    for job_id in cancelled:
        stack.stub().CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), timeout=10)

    seen, pages = list_all(stack, 50)
    assert pages == 3
    assert seen == [job_id for job_id, _, _ in reversed(submitted)], "newest first, each exactly once"

    by_state, _ = list_all(stack, 1000, state=jobs_pb2.JOB_STATE_CANCELLED)
    assert set(by_state) == cancelled and len(by_state) == len(cancelled)
    queued, _ = list_all(stack, 7, state=jobs_pb2.JOB_STATE_QUEUED)
    assert len(queued) == 120 - len(cancelled) and not set(queued) & cancelled
    by_type, _ = list_all(stack, 1000, type="echo")
    assert by_type == [job_id for job_id, type, _ in reversed(submitted) if type == "echo"]
    high, _ = list_all(stack, 1000, priority=jobs_pb2.PRIORITY_HIGH)
    assert high == [job_id for job_id, _, p in reversed(submitted) if p == jobs_pb2.PRIORITY_HIGH]
    both, _ = list_all(stack, 1000, type="echo", priority=jobs_pb2.PRIORITY_LOW)
    assert both == [j for j, t, p in reversed(submitted) if t == "echo" and p == jobs_pb2.PRIORITY_LOW]
    assert list_all(stack, 1000, type="sleep")[0] == []


def test_struct_payload_numbers_survive_as_json(make_stack: MakeStack) -> None:
    stack = make_stack()
    value = struct_pb2.Struct()
    value.update({"big": 2**40, "pi": 3.25, "neg": -7})
    request = jobs_pb2.SubmitJobRequest(type="echo", payload=value)
    job_id = stack.stub().SubmitJob(request, timeout=10).job_id
    job = stack.wait_terminal(job_id)
    assert dict(job.result.struct_value) == {"big": 2**40, "pi": 3.25, "neg": -7}


def test_a_second_message_for_a_finished_job_does_not_run_it_again(make_stack: MakeStack) -> None:
    stack = make_stack(concurrency=1)
    job_id = submit(stack, "echo", {"once": True})
    assert stack.wait_terminal(job_id).state == jobs_pb2.JOB_STATE_SUCCEEDED
    # A redelivery, as after a broker hiccup: the same task id on its queue.
    publisher = Celery(broker=stack.env["REDIS_URL"])
    publisher.send_task("handlers.echo", task_id=job_id, queue="default")
    publisher.close()
    marker = submit(stack, "noop", priority=jobs_pb2.PRIORITY_LOW)
    stack.wait_terminal(marker)
    assert get(stack, job_id).attempts == 1
    assert f"job {job_id} is not claimable" in stack.log("worker")
    assert (
        sql_count(stack, events_table, events_table.c.job_id == job_id, events_table.c.state == "RUNNING")
        == 1
    )


def test_handler_error_is_mirrored_as_failed(make_stack: MakeStack) -> None:
    stack = make_stack()
    job_id = submit(stack, "fail", {"permanent": True})
    job = stack.wait_terminal(job_id)
    assert job.state == jobs_pb2.JOB_STATE_FAILED
    assert job.attempts == 1
    assert "PermanentError: failed permanently" in job.last_error
    assert job.HasField("finished_at") and not job.HasField("result")

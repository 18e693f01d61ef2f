"""Fuzzing: random, huge, negative, deep and malformed input on every RPC gets a documented status,
never INTERNAL or UNKNOWN, and leaves the gateway serving and the database whole.

CI runs the `ci` profile; `scripts/test tests/acceptance/test_fuzz.py --hypothesis-profile=thorough` runs
10,000 cases per RPC group.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpc_gateway.v1 import jobs_pb2
from taskapp.store.engine import create_db_engine
from taskapp.store.tables import events_table, jobs_table
from tests.helpers import Stack

MakeStack = Callable[..., Stack]
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
JOB_TYPES = st.sampled_from(["noop", "echo", "sleep", "fail", "http_call", "email", "", "nope", "é" * 70])
TEXT = st.text(max_size=300) | st.sampled_from(["", " ", "a" * 129, "../../etc", "\x00", "job:1.a-b_c"])
JSON_SCALARS = (
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=50)
)


def deep(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"d": value}
    return value


PAYLOADS = (
    st.recursive(
        JSON_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4)
    ).filter(lambda value: isinstance(value, dict))
    | st.integers(min_value=1, max_value=300).map(deep)
    | st.integers(min_value=200_000, max_value=300_000).map(lambda n: {"blob": "x" * n})
)


@st.composite
def submit_requests(draw: st.DrawFn) -> jobs_pb2.SubmitJobRequest:
    # Any enum number, known or not (proto3 enums are open), which the stubs' types forbid.
    request = jobs_pb2.SubmitJobRequest(job_id=draw(TEXT), type=draw(JOB_TYPES), priority=draw(INT32))  # type: ignore[arg-type]
    if draw(st.booleans()):
        payload = struct_pb2.Struct()
        # Too deep for protobuf to build: the client cannot even send it.
        with contextlib.suppress(ValueError, RecursionError):
            payload.update(draw(PAYLOADS))  # type: ignore[arg-type]
        request.payload.CopyFrom(payload)
    if draw(st.booleans()):
        request.max_attempts = draw(INT32)
    if draw(st.booleans()):
        request.timeout_seconds = draw(INT32)
    if draw(st.booleans()):
        request.run_at.seconds = draw(st.integers(min_value=-(2**62), max_value=2**62))
        request.run_at.nanos = draw(INT32)
    return request


def page_tokens() -> st.SearchStrategy[str]:
    forged = st.builds(
        lambda after, made_for: (
            base64.urlsafe_b64encode(json.dumps({"after": after, "filter": made_for}).encode())
            .decode()
            .rstrip("=")
        ),
        st.one_of(st.integers(), st.text(max_size=5), st.none(), st.floats(allow_nan=False)),
        st.text(max_size=20),
    )
    return TEXT | forged


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, Any]:
    method = draw(
        st.sampled_from(
            [
                "SubmitJob",
                "SubmitJobs",
                "GetJob",
                "CancelJob",
                "RetryJob",
                "ListJobs",
                "WatchJob",
                "GetJobLogs",
            ]
        )
    )
    if method == "SubmitJob":
        return method, draw(submit_requests())
    if method == "SubmitJobs":
        batch = jobs_pb2.SubmitJobsRequest()
        for job in draw(st.lists(submit_requests(), max_size=5)):
            # Copying a request re-parses it here, in the client, which refuses what is nested too deeply.
            with contextlib.suppress(DecodeError):
                batch.jobs.append(job)
        return method, batch
    if method == "ListJobs":
        return method, jobs_pb2.ListJobsRequest(
            state=draw(INT32),  # type: ignore[arg-type]
            priority=draw(INT32),  # type: ignore[arg-type]
            type=draw(TEXT),
            page_size=draw(INT32),
            page_token=draw(page_tokens()),
        )
    request_type = {
        "GetJob": jobs_pb2.GetJobRequest,
        "CancelJob": jobs_pb2.CancelJobRequest,
        "RetryJob": jobs_pb2.RetryJobRequest,
        "WatchJob": jobs_pb2.WatchJobRequest,
        "GetJobLogs": jobs_pb2.GetJobLogsRequest,
    }[method]
    return method, request_type(job_id=draw(TEXT))


@pytest.fixture
def stack(make_stack: MakeStack) -> Iterator[Stack]:
    # No worker: submitted jobs stay QUEUED, so a watch of one would wait; watches get a short deadline.
    yield make_stack(worker=False)


def code_of(stack: Stack, method: str, request: Any) -> grpc.StatusCode:
    rpc = getattr(stack.stub(), method)
    try:
        if method == "WatchJob":
            for _ in rpc(request, timeout=1):
                pass
        else:
            rpc(request, timeout=30)
    except grpc.RpcError as error:
        if method == "WatchJob" and error.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
            return grpc.StatusCode.OK  # A real job, still waiting: the stream was fine.
        assert error.code() in DOCUMENTED, (method, request, error.code(), error.details())
        return error.code()
    return grpc.StatusCode.OK


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)
@given(call=calls())
def test_every_rpc_answers_only_documented_codes(stack: Stack, call: tuple[str, Any]) -> None:
    method, request = call
    code_of(stack, method, request)


def test_after_fuzzing_the_gateway_serves_and_every_job_is_whole(stack: Stack) -> None:
    """Runs the fuzz again on this stack, then checks health and the rows it left."""

    @settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
    @given(call=calls())
    def fuzz(call: tuple[str, Any]) -> None:
        code_of(stack, *call)

    fuzz()
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(stack.address))
    assert (
        health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    engine = create_db_engine(stack.env["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            jobs = conn.execute(
                sa.select(jobs_table.c.job_id, jobs_table.c.state, jobs_table.c.attempts)
            ).all()
            first_events = dict(
                conn.execute(
                    sa.select(events_table.c.job_id, sa.func.min(events_table.c.seq)).group_by(
                        events_table.c.job_id
                    )
                ).all()
            )
    finally:
        engine.dispose()
    for job_id, state, attempts in jobs:
        assert state in ("QUEUED", "SCHEDULED", "CANCELLED"), (job_id, state)
        assert attempts == 0
        assert job_id in first_events, f"job {job_id!r} has no event"
    assert set(first_events) == {job_id for job_id, _, _ in jobs}, "no events without their job"

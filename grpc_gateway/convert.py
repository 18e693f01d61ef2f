"""Protobuf messages to and from taskapp's dataclasses: the only place the two meet."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from grpc_gateway.v1 import jobs_pb2
from taskapp.errors import InvalidArgument
from taskapp.jobs import Job, JobFilter, JobState, Priority
from taskapp.service import SubmitRequest

_PRIORITY_TO_PB = {
    Priority.LOW: jobs_pb2.PRIORITY_LOW,
    Priority.DEFAULT: jobs_pb2.PRIORITY_DEFAULT,
    Priority.HIGH: jobs_pb2.PRIORITY_HIGH,
    Priority.CRITICAL: jobs_pb2.PRIORITY_CRITICAL,
}
_PRIORITY_FROM_PB: dict[int, Priority] = {v: k for k, v in _PRIORITY_TO_PB.items()}
_STATE_TO_PB: dict[JobState, jobs_pb2.JobState] = {
    state: getattr(jobs_pb2, f"JOB_STATE_{state.value}") for state in JobState
}
_STATE_FROM_PB: dict[int, JobState] = {v: k for k, v in _STATE_TO_PB.items()}


def priority_from_pb(value: int, field: str = "priority") -> Priority | None:
    """None for PRIORITY_UNSPECIFIED; an unknown number (proto3 enums are open) is an invalid argument."""
    if value == jobs_pb2.PRIORITY_UNSPECIFIED:
        return None
    try:
        return _PRIORITY_FROM_PB[value]
    except KeyError:
        raise InvalidArgument(field, f"unknown priority {value}") from None


def state_from_pb(value: int, field: str = "state") -> JobState | None:
    if value == jobs_pb2.JOB_STATE_UNSPECIFIED:
        return None
    try:
        return _STATE_FROM_PB[value]
    except KeyError:
        raise InvalidArgument(field, f"unknown job state {value}") from None


def state_to_pb(state: JobState) -> jobs_pb2.JobState:
    return _STATE_TO_PB[state]


def submit_request_from_pb(request: jobs_pb2.SubmitJobRequest) -> SubmitRequest:
    return SubmitRequest(
        job_id=request.job_id or None,
        type=request.type,
        priority=priority_from_pb(request.priority),
        payload=json_format.MessageToDict(request.payload) if request.HasField("payload") else None,
        max_attempts=request.max_attempts if request.HasField("max_attempts") else None,
        timeout_seconds=request.timeout_seconds if request.HasField("timeout_seconds") else None,
        run_at=_datetime(request.run_at, "run_at") if request.HasField("run_at") else None,
    )


def _datetime(stamp: timestamp_pb2.Timestamp, field: str) -> datetime:
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidArgument(field, "is not a valid timestamp") from None


def list_filter_from_pb(request: jobs_pb2.ListJobsRequest) -> JobFilter:
    return JobFilter(
        state=state_from_pb(request.state),
        priority=priority_from_pb(request.priority),
        type=request.type or None,
    )


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _value(value: Any) -> struct_pb2.Value | None:
    if value is None:
        return None
    message = struct_pb2.Value()
    json_format.ParseDict(value, message)
    return message


def job_to_pb(job: Job) -> jobs_pb2.Job:
    payload = struct_pb2.Struct()
    payload.update(job.payload)
    return jobs_pb2.Job(
        job_id=job.job_id,
        type=job.type,
        priority=_PRIORITY_TO_PB[job.priority],
        state=state_to_pb(job.state),
        payload=payload,
        result=_value(job.result),
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        last_error=job.last_error,
        timeout_seconds=job.timeout_seconds,
        created_at=_timestamp(job.created_at),
        updated_at=_timestamp(job.updated_at),
        scheduled_at=_timestamp(job.scheduled_at),
        started_at=_timestamp(job.started_at),
        finished_at=_timestamp(job.finished_at),
        worker=job.worker,
    )

"""Python clients of `taskapp.v1.JobService`: its calls as methods on taskapp's dataclasses, errors as one type.

`JobClient` blocks (grpc); `AsyncJobClient` is its asyncio twin (grpc.aio), with the same methods.
"""

from __future__ import annotations

import builtins
import ipaddress
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from grpc_gateway import convert
from grpc_gateway.v1 import jobs_pb2, jobs_pb2_grpc
from taskapp.explain import WaitCode
from taskapp.jobs import (
    BulkOutcome,
    FlowControl,
    Job,
    JobEvent,
    JobFilter,
    JobPage,
    JobState,
    LogLine,
    Priority,
    QueueStats,
    SubmitRequest,
)
from taskapp.schedules import CatchUp, Overlap, Schedule, ScheduleSpec

__all__ = [
    "DEFAULT_ADDRESS",
    "AsyncJobClient",
    "Cancelled",
    "CatchUp",
    "JobClient",
    "JobPage",
    "JobServiceError",
    "JobSpec",
    "Overlap",
    "PutSchedule",
    "Schedule",
    "ScheduleSpec",
    "Submitted",
    "channel_target",
]

DEFAULT_ADDRESS = "127.0.0.1:50051"

#: Calls spread over every gateway the address names (round robin), a gateway whose connection is gone (or
#: silent: keepalive pings go unanswered for 2 s) is left out, and a call refused with UNAVAILABLE (a gateway
#: stopping, or lost before it answered) is tried again, on another gateway if there is one. SubmitJob is safe
#: to try again: the client names each job it submits (see `_submit_request`).
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}
CHANNEL_OPTIONS = [
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
    ("grpc.enable_retries", 1),
    ("grpc.keepalive_time_ms", 2_000),
    ("grpc.keepalive_timeout_ms", 2_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def channel_target(address: str) -> str:
    """gRPC's target for `address`: one gateway (`host:port`), a DNS name with a record per gateway
    (`dns:///jobs.internal:50051`), or several gateways by IP address, comma separated
    (`10.0.0.1:50051,10.0.0.2:50051`)."""
    addresses = [part.strip() for part in address.split(",") if part.strip()]
    if len(addresses) == 1:
        return addresses[0]
    versions = set()
    for each in addresses:
        host = each.rpartition(":")[0].strip("[]")
        try:
            versions.add(ipaddress.ip_address(host).version)
        except ValueError:
            raise ValueError(
                f"several gateways are given by IP address ({each!r} is not): for host names, use one DNS name "
                "with a record per gateway, as dns:///name:port"
            ) from None
    if len(versions) > 1:
        raise ValueError(f"several gateways are all IPv4 or all IPv6, not both: {address!r}")
    return f"ipv{versions.pop()}:{','.join(addresses)}"


class JobServiceError(Exception):
    """Raised when the gateway answers a call with an error, or cannot be reached (`code` "UNAVAILABLE")."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        #: The gRPC status name, e.g. "NOT_FOUND".
        self.code = code
        self.message = message


#: One job to submit: the service's own `SubmitRequest`, under the name clients know it by.
JobSpec = SubmitRequest


@dataclass(frozen=True, slots=True)
class PutSchedule:
    schedule: Schedule
    created: bool
    #: False when the schedule was already this definition.
    changed: bool


@dataclass(frozen=True, slots=True)
class Explained:
    """ExplainJob's answer: why the job is not running, or what it is doing."""

    job_id: str
    state: JobState
    code: WaitCode
    reason: str
    #: Until when, where the reason has an end.
    until: datetime | None
    blocking_job_ids: list[str]
    ahead: int
    worker: str


@dataclass(frozen=True, slots=True)
class Submitted:
    job_id: str
    state: JobState
    #: False when `job_id` named a job already submitted with the same request (or when the call was tried again
    #: after a first try that made the job but whose answer was lost).
    created: bool


@dataclass(frozen=True, slots=True)
class Cancelled:
    #: False when the job had already finished.
    cancelled: bool
    #: The job's state after the call.
    state: JobState


def _error(exc: grpc.RpcError) -> JobServiceError:
    return JobServiceError(exc.code().name, exc.details() or "")


def _state(value: int) -> JobState:
    state = convert.state_from_pb(value)
    if state is None:
        # The gateway always sets a state; a reply without one is as unusable as any malformed answer.
        raise JobServiceError("INTERNAL", "the gateway answered without a job state")
    return state


def _submit_request(spec: JobSpec) -> jobs_pb2.SubmitJobRequest:
    # A job the caller does not name is named here, not by the gateway, so that a call tried again (on another
    # gateway, after the first was lost before it answered) finds the job its first try made, if it did.
    request = jobs_pb2.SubmitJobRequest(
        type=spec.type,
        job_id=spec.job_id or str(uuid.uuid4()),
        max_attempts=spec.max_attempts,
        timeout_seconds=spec.timeout_seconds,
    )
    if spec.priority is not None:
        request.priority = convert.priority_to_pb(spec.priority)
    if spec.payload is not None:
        request.payload.update(spec.payload)
    if spec.run_at is not None:
        # Protobuf would read a naive datetime as UTC; astimezone() reads it as local time, and an aware one
        # keeps its instant.
        request.run_at.FromDatetime(spec.run_at.astimezone())
    if spec.labels:
        request.labels.update(spec.labels)
    if spec.unique_key is not None:
        request.unique_key = spec.unique_key
    if spec.unique_for is not None:
        request.unique_for.FromTimedelta(spec.unique_for)
    if spec.concurrency_key is not None:
        request.concurrency_key = spec.concurrency_key
    if spec.concurrency_limit is not None:
        request.concurrency_limit = spec.concurrency_limit
    return request


def _explained(reply: jobs_pb2.ExplainJobResponse) -> Explained:
    return Explained(
        job_id=reply.job_id,
        state=_state(reply.state),
        code=convert.wait_code_from_pb(reply.code),
        reason=reply.reason,
        until=reply.until.ToDatetime(tzinfo=UTC) if reply.HasField("until") else None,
        blocking_job_ids=list(reply.blocking_job_ids),
        ahead=reply.ahead,
        worker=reply.worker,
    )


def _submitted(reply: jobs_pb2.SubmitJobResponse) -> Submitted:
    return Submitted(job_id=reply.job_id, state=_state(reply.state), created=reply.created)


def _cancelled(reply: jobs_pb2.CancelJobResponse) -> Cancelled:
    return Cancelled(cancelled=reply.cancelled, state=_state(reply.state))


FilteredRequest = TypeVar(
    "FilteredRequest", jobs_pb2.ListJobsRequest, jobs_pb2.CancelJobsRequest, jobs_pb2.RetryJobsRequest
)


def _filtered(request: FilteredRequest, filter: JobFilter) -> FilteredRequest:
    """`request` with the filter fields ListJobs, CancelJobs and RetryJobs share set from `filter`."""
    if filter.state is not None:
        request.state = convert.state_to_pb(filter.state)
    if filter.priority is not None:
        request.priority = convert.priority_to_pb(filter.priority)
    request.type = filter.type or ""
    request.labels.update(filter.labels)
    request.job_id_prefix = filter.job_id_prefix or ""
    # As for run_at: a naive datetime is local time.
    if filter.created_after is not None:
        request.created_after.FromDatetime(filter.created_after.astimezone())
    if filter.created_before is not None:
        request.created_before.FromDatetime(filter.created_before.astimezone())
    return request


def _bulk(reply: jobs_pb2.BulkResponse) -> BulkOutcome:
    return BulkOutcome(acted_on=reply.acted_on, skipped=reply.skipped)


def _page(reply: jobs_pb2.ListJobsResponse) -> JobPage:
    return JobPage(
        jobs=[convert.job_from_pb(job) for job in reply.jobs], next_page_token=reply.next_page_token
    )


class _Settings:
    """What both clients resolve the same way from their arguments and the environment."""

    def __init__(self, address: str | None, token: str | None, timeout: float) -> None:
        self.address = address or os.environ.get("TASKAPP_ADDRESS") or DEFAULT_ADDRESS
        token = token if token is not None else os.environ.get("TASKAPP_TOKEN")
        #: Sent on every call.
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        #: Seconds each call may take, but `watch`, which lasts as long as the job.
        self.timeout = timeout


class JobClient:
    """A blocking client of the gateway at `address` (default: $TASKAPP_ADDRESS, else 127.0.0.1:50051).

    `token` (default: $TASKAPP_TOKEN) goes with every call as a bearer token; `credentials`
    (`grpc.ssl_channel_credentials(...)`) make it talk TLS. Every method raises `JobServiceError`, never a grpc
    exception. Close it, or use it as a context manager."""

    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._settings = _Settings(address, token, timeout)
        self.address = self._settings.address
        target = channel_target(self.address)
        self._channel = (
            grpc.secure_channel(target, credentials, CHANNEL_OPTIONS)
            if credentials
            else grpc.insecure_channel(target, CHANNEL_OPTIONS)
        )
        self._stub = jobs_pb2_grpc.JobServiceStub(self._channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self._settings.timeout, metadata=self._settings.metadata)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    def submit(
        self,
        type: str,
        payload: dict[str, Any] | None = None,
        *,
        job_id: str | None = None,
        priority: Priority | None = None,
        max_attempts: int | None = None,
        timeout_seconds: int | None = None,
        run_at: datetime | None = None,
        labels: dict[str, str] | None = None,
        unique_key: str | None = None,
        unique_for: timedelta | None = None,
        concurrency_key: str | None = None,
        concurrency_limit: int | None = None,
    ) -> Submitted:
        """Submit one job (see `JobSpec` for the arguments)."""
        spec = JobSpec(
            type,
            payload,
            job_id,
            priority,
            max_attempts,
            timeout_seconds,
            run_at,
            labels,
            unique_key,
            unique_for,
            concurrency_key,
            concurrency_limit,
        )
        return _submitted(self._call(self._stub.SubmitJob, _submit_request(spec)))

    def submit_many(self, specs: Sequence[JobSpec]) -> builtins.list[Submitted]:
        """Submit up to 1,000 jobs at once: all of them, or (on any invalid one) none."""
        request = jobs_pb2.SubmitJobsRequest(jobs=[_submit_request(spec) for spec in specs])
        return [_submitted(result) for result in self._call(self._stub.SubmitJobs, request).results]

    def get(self, job_id: str) -> Job:
        return convert.job_from_pb(self._call(self._stub.GetJob, jobs_pb2.GetJobRequest(job_id=job_id)))

    def cancel(self, job_id: str) -> Cancelled:
        return _cancelled(self._call(self._stub.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id)))

    def retry(self, job_id: str) -> Job:
        """Run a FAILED, DEAD_LETTER or CANCELLED job again with fresh attempts."""
        return convert.job_from_pb(self._call(self._stub.RetryJob, jobs_pb2.RetryJobRequest(job_id=job_id)))

    def list(
        self,
        *,
        state: JobState | None = None,
        priority: Priority | None = None,
        type: str | None = None,
        labels: dict[str, str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        job_id_prefix: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> JobPage:
        """One page of jobs, newest first; pass its `next_page_token`, with the same filters, for the next.
        Every filter given must hold: `labels` all of them, created in [`created_after`, `created_before`)."""
        filter = JobFilter(state, priority, type, labels or {}, created_after, created_before, job_id_prefix)
        request = _filtered(jobs_pb2.ListJobsRequest(page_size=page_size, page_token=page_token), filter)
        return _page(self._call(self._stub.ListJobs, request))

    def cancel_many(self, filter: JobFilter, *, dry_run: bool = False, limit: int = 0) -> BulkOutcome:
        """Cancel every job `filter` matches that has not finished (at most `limit`; 0: all). A dry run counts."""
        request = _filtered(jobs_pb2.CancelJobsRequest(dry_run=dry_run, limit=limit), filter)
        return _bulk(self._call(self._stub.CancelJobs, request))

    def retry_many(self, filter: JobFilter, *, dry_run: bool = False, limit: int = 0) -> BulkOutcome:
        """Retry every FAILED, DEAD_LETTER or CANCELLED job `filter` matches (at most `limit`; 0: all)."""
        request = _filtered(jobs_pb2.RetryJobsRequest(dry_run=dry_run, limit=limit), filter)
        return _bulk(self._call(self._stub.RetryJobs, request))

    # Schedules.

    def put_schedule(self, spec: ScheduleSpec, *, must_exist: bool = False) -> PutSchedule:
        """CreateSchedule (or UpdateSchedule with `must_exist`): the schedule, whether created, whether changed."""
        schedule = convert.schedule_spec_to_pb(spec)
        if must_exist:
            reply = self._call(self._stub.UpdateSchedule, jobs_pb2.UpdateScheduleRequest(schedule=schedule))
        else:
            reply = self._call(self._stub.CreateSchedule, jobs_pb2.CreateScheduleRequest(schedule=schedule))
        return PutSchedule(convert.schedule_from_pb(reply.schedule), reply.created, reply.changed)

    def get_schedule(self, name: str) -> Schedule:
        return convert.schedule_from_pb(
            self._call(self._stub.GetSchedule, jobs_pb2.GetScheduleRequest(name=name))
        )

    def list_schedules(self) -> builtins.list[Schedule]:
        reply = self._call(self._stub.ListSchedules, jobs_pb2.ListSchedulesRequest())
        return [convert.schedule_from_pb(schedule) for schedule in reply.schedules]

    def pause_schedule(self, name: str) -> Schedule:
        reply = self._call(self._stub.PauseSchedule, jobs_pb2.PauseScheduleRequest(name=name))
        return convert.schedule_from_pb(reply)

    def resume_schedule(self, name: str) -> Schedule:
        reply = self._call(self._stub.ResumeSchedule, jobs_pb2.ResumeScheduleRequest(name=name))
        return convert.schedule_from_pb(reply)

    def delete_schedule(self, name: str) -> bool:
        return bool(self._call(self._stub.DeleteSchedule, jobs_pb2.DeleteScheduleRequest(name=name)).deleted)

    def trigger_schedule(self, name: str) -> Submitted:
        return _submitted(self._call(self._stub.TriggerSchedule, jobs_pb2.TriggerScheduleRequest(name=name)))

    def explain(self, job_id: str) -> Explained:
        return _explained(self._call(self._stub.ExplainJob, jobs_pb2.ExplainJobRequest(job_id=job_id)))

    def set_type_limit(
        self, type: str, max_running: int | None, rate: int | None = None, rate_seconds: float = 1.0
    ) -> FlowControl:
        """At most `max_running` jobs of `type` at once across every worker, and at most `rate` starts per
        `rate_seconds`; None removes that limit."""
        request = jobs_pb2.SetTypeLimitRequest(type=type, max_running=max_running, rate=rate)
        if rate is not None:
            request.rate_interval.FromTimedelta(timedelta(seconds=rate_seconds))
        return convert.flow_control_from_pb(self._call(self._stub.SetTypeLimit, request))

    def set_key_rate(self, key: str, rate: int | None, rate_seconds: float = 1.0) -> FlowControl:
        """At most `rate` starts per `rate_seconds` of the jobs with concurrency key `key`; None removes it."""
        request = jobs_pb2.SetKeyRateRequest(key=key, rate=rate)
        if rate is not None:
            request.rate_interval.FromTimedelta(timedelta(seconds=rate_seconds))
        return convert.flow_control_from_pb(self._call(self._stub.SetKeyRate, request))

    def pause_type(self, type: str) -> FlowControl:
        reply = self._call(self._stub.PauseType, jobs_pb2.PauseTypeRequest(type=type))
        return convert.flow_control_from_pb(reply)

    def resume_type(self, type: str) -> FlowControl:
        reply = self._call(self._stub.ResumeType, jobs_pb2.ResumeTypeRequest(type=type))
        return convert.flow_control_from_pb(reply)

    def pause_queue(self, queue: Priority) -> FlowControl:
        request = jobs_pb2.PauseQueueRequest(queue=convert.priority_to_pb(queue))
        return convert.flow_control_from_pb(self._call(self._stub.PauseQueue, request))

    def resume_queue(self, queue: Priority) -> FlowControl:
        request = jobs_pb2.ResumeQueueRequest(queue=convert.priority_to_pb(queue))
        return convert.flow_control_from_pb(self._call(self._stub.ResumeQueue, request))

    def flow_controls(self) -> builtins.list[FlowControl]:
        """Every job type, queue and key with a limit, a rate or a pause: types, then queues, then keys."""
        reply = self._call(self._stub.GetFlowControls, jobs_pb2.GetFlowControlsRequest())
        return [
            convert.flow_control_from_pb(control) for control in [*reply.types, *reply.queues, *reply.keys]
        ]

    def watch(self, job_id: str, *, timeout: float | None = None) -> Iterator[JobEvent]:
        """The job's current state, then each change, ending after a terminal state.

        No deadline by default (`timeout` seconds for the whole watch): a job may run for hours."""
        call = self._stub.WatchJob(
            jobs_pb2.WatchJobRequest(job_id=job_id), timeout=timeout, metadata=self._settings.metadata
        )
        try:
            for event in call:
                yield convert.event_from_pb(event)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        finally:
            # A caller that stops iterating early must not leave the stream open on the gateway.
            call.cancel()

    def logs(self, job_id: str) -> builtins.list[LogLine]:
        """What the job's handler logged, oldest first."""
        reply = self._call(self._stub.GetJobLogs, jobs_pb2.GetJobLogsRequest(job_id=job_id))
        return [convert.log_line_from_pb(line) for line in reply.lines]

    def stats(self) -> QueueStats:
        return convert.queue_stats_from_pb(
            self._call(self._stub.GetQueueStats, jobs_pb2.GetQueueStatsRequest())
        )


class AsyncJobClient:
    """`JobClient` for asyncio: the same arguments and methods, awaitable (`watch` is async-iterable).

    Make it inside the event loop it is used from; close it with `await close()` or `async with`."""

    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._settings = _Settings(address, token, timeout)
        self.address = self._settings.address
        target = channel_target(self.address)
        self._channel = (
            grpc.aio.secure_channel(target, credentials, CHANNEL_OPTIONS)
            if credentials
            else grpc.aio.insecure_channel(target, CHANNEL_OPTIONS)
        )
        self._stub = jobs_pb2_grpc.JobServiceStub(self._channel)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self._settings.timeout, metadata=self._settings.metadata)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    async def submit(
        self,
        type: str,
        payload: dict[str, Any] | None = None,
        *,
        job_id: str | None = None,
        priority: Priority | None = None,
        max_attempts: int | None = None,
        timeout_seconds: int | None = None,
        run_at: datetime | None = None,
        labels: dict[str, str] | None = None,
        unique_key: str | None = None,
        unique_for: timedelta | None = None,
        concurrency_key: str | None = None,
        concurrency_limit: int | None = None,
    ) -> Submitted:
        """Submit one job (see `JobSpec` for the arguments)."""
        spec = JobSpec(
            type,
            payload,
            job_id,
            priority,
            max_attempts,
            timeout_seconds,
            run_at,
            labels,
            unique_key,
            unique_for,
            concurrency_key,
            concurrency_limit,
        )
        return _submitted(await self._call(self._stub.SubmitJob, _submit_request(spec)))

    async def submit_many(self, specs: Sequence[JobSpec]) -> builtins.list[Submitted]:
        """Submit up to 1,000 jobs at once: all of them, or (on any invalid one) none."""
        request = jobs_pb2.SubmitJobsRequest(jobs=[_submit_request(spec) for spec in specs])
        return [_submitted(result) for result in (await self._call(self._stub.SubmitJobs, request)).results]

    async def get(self, job_id: str) -> Job:
        return convert.job_from_pb(await self._call(self._stub.GetJob, jobs_pb2.GetJobRequest(job_id=job_id)))

    async def cancel(self, job_id: str) -> Cancelled:
        return _cancelled(await self._call(self._stub.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id)))

    async def retry(self, job_id: str) -> Job:
        """Run a FAILED, DEAD_LETTER or CANCELLED job again with fresh attempts."""
        return convert.job_from_pb(
            await self._call(self._stub.RetryJob, jobs_pb2.RetryJobRequest(job_id=job_id))
        )

    async def list(
        self,
        *,
        state: JobState | None = None,
        priority: Priority | None = None,
        type: str | None = None,
        labels: dict[str, str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        job_id_prefix: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> JobPage:
        """One page of jobs, newest first; pass its `next_page_token`, with the same filters, for the next.
        Every filter given must hold: `labels` all of them, created in [`created_after`, `created_before`)."""
        filter = JobFilter(state, priority, type, labels or {}, created_after, created_before, job_id_prefix)
        request = _filtered(jobs_pb2.ListJobsRequest(page_size=page_size, page_token=page_token), filter)
        return _page(await self._call(self._stub.ListJobs, request))

    async def cancel_many(self, filter: JobFilter, *, dry_run: bool = False, limit: int = 0) -> BulkOutcome:
        """Cancel every job `filter` matches that has not finished (at most `limit`; 0: all). A dry run counts."""
        request = _filtered(jobs_pb2.CancelJobsRequest(dry_run=dry_run, limit=limit), filter)
        return _bulk(await self._call(self._stub.CancelJobs, request))

    async def retry_many(self, filter: JobFilter, *, dry_run: bool = False, limit: int = 0) -> BulkOutcome:
        """Retry every FAILED, DEAD_LETTER or CANCELLED job `filter` matches (at most `limit`; 0: all)."""
        request = _filtered(jobs_pb2.RetryJobsRequest(dry_run=dry_run, limit=limit), filter)
        return _bulk(await self._call(self._stub.RetryJobs, request))

    async def watch(self, job_id: str, *, timeout: float | None = None) -> AsyncIterator[JobEvent]:
        """The job's current state, then each change, ending after a terminal state.

        No deadline by default (`timeout` seconds for the whole watch): a job may run for hours."""
        call = self._stub.WatchJob(
            jobs_pb2.WatchJobRequest(job_id=job_id), timeout=timeout, metadata=self._settings.metadata
        )
        try:
            async for event in call:
                yield convert.event_from_pb(event)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        finally:
            # A caller that stops iterating early must not leave the stream open on the gateway.
            call.cancel()

    async def logs(self, job_id: str) -> builtins.list[LogLine]:
        """What the job's handler logged, oldest first."""
        reply = await self._call(self._stub.GetJobLogs, jobs_pb2.GetJobLogsRequest(job_id=job_id))
        return [convert.log_line_from_pb(line) for line in reply.lines]

    async def stats(self) -> QueueStats:
        return convert.queue_stats_from_pb(
            await self._call(self._stub.GetQueueStats, jobs_pb2.GetQueueStatsRequest())
        )

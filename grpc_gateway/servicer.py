"""`taskapp.v1.JobService`: converts messages and calls `JobService`; errors become statuses in one place."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc

from grpc_gateway import convert
from grpc_gateway.batching import SubmitBatcher
from grpc_gateway.changes import ChangeListener
from grpc_gateway.ops_http import RPC_SECONDS, RPCS
from grpc_gateway.v1 import jobs_pb2, jobs_pb2_grpc
from taskapp import start_latency
from taskapp.config import get_settings
from taskapp.errors import FieldError, TaskappError
from taskapp.jobs import BulkOutcome, SubmitOutcome
from taskapp.metrics import jobs_submitted
from taskapp.schedules import ScheduleService
from taskapp.service import JobService

log = logging.getLogger(__name__)

#: Trailing metadata naming the request field an error is about (`jobs[3].payload`), when it is about one.
FIELD_KEY = "taskapp-field"
#: Seconds a WatchJob stream waits for a change notification before it reads SQL anyway.
WATCH_POLL_SECONDS = 1.0

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
Method = Callable[[Any, RequestT, grpc.aio.ServicerContext], Awaitable[ResponseT]]

#: Each call's metrics by label values, looked up once (`taskapp.metrics.jobs_submitted` says why).
rpcs = functools.cache(RPCS.labels)
rpc_seconds = functools.cache(RPC_SECONDS.labels)


def count_submitted(outcome: SubmitOutcome, received: float) -> None:
    """A job created by a call received at `received`: counted, and its stages in the gateway timed."""
    if outcome.created:
        jobs_submitted(outcome.job.type, outcome.job.priority.value).inc()
        start_latency.submitted(outcome, received)


class Gate:
    """Counts the calls being handled. Once closed (the gateway is stopping), new calls are refused with
    UNAVAILABLE, which clients retry elsewhere, while the calls already in flight finish."""

    def __init__(self) -> None:
        self.closed = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_refusal = 0.0

    def refuse(self) -> None:
        """A call came while closed; it is refused, and the gateway keeps refusing a while longer."""
        self._last_refusal = time.monotonic()

    @contextlib.contextmanager
    def passage(self) -> Iterator[None]:
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def close(self, grace: float) -> None:
        """Refuse new calls and wait up to `grace` seconds for the ones in flight."""
        self.closed = True
        self._last_refusal = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)

    async def quiet(self, quiet_for: float, at_most: float) -> None:
        """Return once no call has been refused for `quiet_for` seconds, or after `at_most`.

        gRPC cancels (CANCELLED, which clients do not retry) every call the server holds when it stops, even
        one not yet handed to the servicer. While callers keep knocking they are told UNAVAILABLE instead; the
        server stops in a lull, when no call is likely to be on its way."""
        deadline = time.monotonic() + at_most
        while (now := time.monotonic()) < deadline:
            lull_ends = self._last_refusal + quiet_for
            if now >= lull_ends:
                return
            await asyncio.sleep(min(lull_ends, deadline) - now)


def answers_errors(method: Method[RequestT, ResponseT]) -> Method[RequestT, ResponseT]:
    """Map taskapp errors to their gRPC status; anything unexpected is logged and answered INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: RequestT, context: grpc.aio.ServicerContext) -> ResponseT:
        name = method.__name__
        if self.gate.closed:
            self.gate.refuse()
            rpcs(name, "UNAVAILABLE").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the gateway is shutting down: try again")
        started = time.perf_counter()
        code = "OK"
        try:
            with self.gate.passage():
                return await method(self, request, context)
        except TaskappError as exc:
            code = exc.grpc_code
            # The refused field, for programs: a client's error handling need not parse the message.
            field = ((FIELD_KEY, exc.field),) if isinstance(exc, FieldError) else ()
            await context.abort(grpc.StatusCode[exc.grpc_code], str(exc), field)
        except Exception:
            code = "INTERNAL"
            log.exception("%s failed", name)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            rpcs(name, code).inc()
            rpc_seconds(name).observe(time.perf_counter() - started)
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


class JobServicer(jobs_pb2_grpc.JobServiceServicer):  # type: ignore[misc]
    """The service's calls block on SQL and the broker, so they run in worker threads, off the event loop."""

    def __init__(
        self, service: JobService, changes: ChangeListener, batcher: SubmitBatcher, schedules: ScheduleService
    ) -> None:
        self.service = service
        self.schedules = schedules
        self.changes = changes
        self.batcher = batcher
        self.gate = Gate()

    @answers_errors
    async def SubmitJobs(
        self, request: jobs_pb2.SubmitJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.SubmitJobsResponse:
        received = time.time()
        requests = [
            convert.submit_request_from_pb(job, f"jobs[{index}].") for index, job in enumerate(request.jobs)
        ]
        outcomes = await asyncio.to_thread(self.service.submit_many, requests)
        for outcome in outcomes:
            count_submitted(outcome, received)
        return jobs_pb2.SubmitJobsResponse(
            results=[
                jobs_pb2.SubmitJobResponse(
                    job_id=outcome.job.job_id,
                    state=convert.state_to_pb(outcome.job.state),
                    created=outcome.created,
                )
                for outcome in outcomes
            ]
        )

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.JobEvent]:
        """The job's latest event, then every newer one from `job_events`, until a terminal state. The stream
        waits for a change notification, or a second at most, before reading SQL again."""
        if self.gate.closed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the gateway is shutting down: try again")
        with self.changes.waiting_on(request.job_id) as changed:
            try:
                labels = (await asyncio.to_thread(self.service.get, request.job_id)).labels
                last = await asyncio.to_thread(self.service.latest_event, request.job_id)
            except TaskappError as exc:
                await context.abort(grpc.StatusCode[exc.grpc_code], str(exc))
            yield convert.event_to_pb(last, labels)
            while not last.state.is_terminal:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), WATCH_POLL_SECONDS)
                changed.clear()
                try:
                    events = await asyncio.to_thread(self.service.events_after, request.job_id, last.seq)
                except TaskappError:
                    continue  # The database is away for a moment: look again.
                for event in events:
                    yield convert.event_to_pb(event, labels)
                    last = event
                    if event.state.is_terminal:
                        break

    @answers_errors
    async def GetJobLogs(
        self, request: jobs_pb2.GetJobLogsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.GetJobLogsResponse:
        lines = await asyncio.to_thread(self.service.logs, request.job_id)
        return jobs_pb2.GetJobLogsResponse(lines=[convert.log_line_to_pb(line) for line in lines])

    @answers_errors
    async def GetQueueStats(
        self, request: jobs_pb2.GetQueueStatsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.GetQueueStatsResponse:
        stats = await asyncio.to_thread(self.service.queue_stats)
        return convert.queue_stats_to_pb(stats)

    @answers_errors
    async def SubmitJob(
        self, request: jobs_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.SubmitJobResponse:
        received = time.time()
        # Validation is a few microseconds of CPU: on the event loop. The write is shared (`SubmitBatcher`).
        outcome = await self.batcher.submit(self.service.validate(convert.submit_request_from_pb(request)))
        count_submitted(outcome, received)
        return jobs_pb2.SubmitJobResponse(
            job_id=outcome.job.job_id,
            state=convert.state_to_pb(outcome.job.state),
            created=outcome.created,
        )

    @answers_errors
    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Job:
        job = await asyncio.to_thread(self.service.get, request.job_id)
        return convert.job_to_pb(job)

    @answers_errors
    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CancelJobResponse:
        outcome = await asyncio.to_thread(self.service.cancel, request.job_id)
        return jobs_pb2.CancelJobResponse(
            cancelled=outcome.cancelled, state=convert.state_to_pb(outcome.state)
        )

    @answers_errors
    async def RetryJob(
        self, request: jobs_pb2.RetryJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Job:
        job = await asyncio.to_thread(self.service.retry, request.job_id)
        return convert.job_to_pb(job)

    @answers_errors
    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        page = await asyncio.to_thread(
            self.service.list,
            convert.filter_from_pb(request),
            request.page_size,
            request.page_token,
        )
        return jobs_pb2.ListJobsResponse(
            jobs=[convert.job_to_pb(job) for job in page.jobs],
            next_page_token=page.next_page_token,
        )

    @answers_errors
    async def CancelJobs(
        self, request: jobs_pb2.CancelJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.BulkResponse:
        return await self._act_on_filter(self.service.cancel_many, request)

    @answers_errors
    async def RetryJobs(
        self, request: jobs_pb2.RetryJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.BulkResponse:
        return await self._act_on_filter(self.service.retry_many, request)

    async def _act_on_filter(
        self,
        act: Callable[..., BulkOutcome],
        request: jobs_pb2.CancelJobsRequest | jobs_pb2.RetryJobsRequest,
    ) -> jobs_pb2.BulkResponse:
        """CancelJobs and RetryJobs: `act` (the service's `cancel_many` or `retry_many`) on the request's filter."""
        outcome = await asyncio.to_thread(
            act, convert.filter_from_pb(request), dry_run=request.dry_run, limit=request.limit
        )
        return jobs_pb2.BulkResponse(acted_on=outcome.acted_on, skipped=outcome.skipped)

    # Schedules.

    @answers_errors
    async def CreateSchedule(
        self, request: jobs_pb2.CreateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.PutScheduleResponse:
        return await self._put_schedule(request.schedule, must_exist=False)

    @answers_errors
    async def UpdateSchedule(
        self, request: jobs_pb2.UpdateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.PutScheduleResponse:
        return await self._put_schedule(request.schedule, must_exist=True)

    async def _put_schedule(
        self, schedule: jobs_pb2.Schedule, must_exist: bool
    ) -> jobs_pb2.PutScheduleResponse:
        spec = convert.schedule_spec_from_pb(schedule)
        stored, created, changed = await asyncio.to_thread(self.schedules.put, spec, must_exist)
        return jobs_pb2.PutScheduleResponse(
            schedule=convert.schedule_to_pb(stored), created=created, changed=changed
        )

    @answers_errors
    async def GetSchedule(
        self, request: jobs_pb2.GetScheduleRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Schedule:
        return convert.schedule_to_pb(await asyncio.to_thread(self.schedules.get, request.name))

    @answers_errors
    async def ListSchedules(
        self, request: jobs_pb2.ListSchedulesRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListSchedulesResponse:
        schedules = await asyncio.to_thread(self.schedules.list)
        return jobs_pb2.ListSchedulesResponse(schedules=[convert.schedule_to_pb(s) for s in schedules])

    @answers_errors
    async def PauseSchedule(
        self, request: jobs_pb2.PauseScheduleRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Schedule:
        paused = await asyncio.to_thread(self.schedules.set_paused, request.name, True)
        return convert.schedule_to_pb(paused)

    @answers_errors
    async def ResumeSchedule(
        self, request: jobs_pb2.ResumeScheduleRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.Schedule:
        resumed = await asyncio.to_thread(self.schedules.set_paused, request.name, False)
        return convert.schedule_to_pb(resumed)

    @answers_errors
    async def DeleteSchedule(
        self, request: jobs_pb2.DeleteScheduleRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.DeleteScheduleResponse:
        return jobs_pb2.DeleteScheduleResponse(
            deleted=await asyncio.to_thread(self.schedules.delete, request.name)
        )

    @answers_errors
    async def TriggerSchedule(
        self, request: jobs_pb2.TriggerScheduleRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.SubmitJobResponse:
        outcome = await asyncio.to_thread(self.schedules.trigger, request.name)
        return jobs_pb2.SubmitJobResponse(
            job_id=outcome.job.job_id, state=convert.state_to_pb(outcome.job.state), created=outcome.created
        )

    @answers_errors
    async def SetTypeLimit(
        self, request: jobs_pb2.SetTypeLimitRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.TypeControl:
        control = await asyncio.to_thread(
            self.service.set_type_limit,
            request.type,
            request.max_running if request.HasField("max_running") else None,
            request.rate if request.HasField("rate") else None,
            convert.rate_seconds_from_pb(request),
        )
        return convert.type_control_to_pb(control)

    @answers_errors
    async def SetKeyRate(
        self, request: jobs_pb2.SetKeyRateRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.KeyControl:
        control = await asyncio.to_thread(
            self.service.set_key_rate,
            request.key,
            request.rate if request.HasField("rate") else None,
            convert.rate_seconds_from_pb(request),
        )
        return convert.key_control_to_pb(control)

    @answers_errors
    async def PauseType(
        self, request: jobs_pb2.PauseTypeRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.TypeControl:
        return convert.type_control_to_pb(
            await asyncio.to_thread(self.service.pause_type, request.type, True)
        )

    @answers_errors
    async def ResumeType(
        self, request: jobs_pb2.ResumeTypeRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.TypeControl:
        return convert.type_control_to_pb(
            await asyncio.to_thread(self.service.pause_type, request.type, False)
        )

    @answers_errors
    async def PauseQueue(
        self, request: jobs_pb2.PauseQueueRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.QueueControl:
        queue = convert.queue_from_pb(request.queue)
        return convert.queue_control_to_pb(await asyncio.to_thread(self.service.pause_queue, queue, True))

    @answers_errors
    async def ResumeQueue(
        self, request: jobs_pb2.ResumeQueueRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.QueueControl:
        queue = convert.queue_from_pb(request.queue)
        return convert.queue_control_to_pb(await asyncio.to_thread(self.service.pause_queue, queue, False))

    @answers_errors
    async def GetFlowControls(
        self, request: jobs_pb2.GetFlowControlsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.FlowControls:
        controls = await asyncio.to_thread(self.service.flow_controls)
        return jobs_pb2.FlowControls(
            types=[convert.type_control_to_pb(control) for control in controls if control.type is not None],
            queues=[
                convert.queue_control_to_pb(control) for control in controls if control.queue is not None
            ],
            keys=[convert.key_control_to_pb(control) for control in controls if control.key is not None],
        )

    @answers_errors
    async def ExplainJob(
        self, request: jobs_pb2.ExplainJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ExplainJobResponse:
        # Workers beat as often as they renew leases: six times a lease (`taskapp.worker_leases`).
        beat_seconds = get_settings().lease_seconds / 6
        explanation = await asyncio.to_thread(self.service.explain, request.job_id, beat_seconds)
        return convert.explanation_to_pb(explanation)

"""Protobuf messages to and from taskapp's dataclasses: the only place the two meet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from grpc_gateway.v1 import jobs_pb2
from taskapp.errors import InvalidArgument
from taskapp.explain import Explanation, WaitCode
from taskapp.jobs import (
    FlowControl,
    Job,
    JobEvent,
    JobFilter,
    JobState,
    LogLine,
    Priority,
    QueueStats,
    SubmitRequest,
    key_scope,
    queue_scope,
    type_scope,
)
from taskapp.schedules import CatchUp, Overlap, Schedule, ScheduleSpec

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


def submit_request_from_pb(request: jobs_pb2.SubmitJobRequest, field_prefix: str = "") -> SubmitRequest:
    """`field_prefix` names the request within a batch (`jobs[3].`) in errors."""
    return SubmitRequest(
        job_id=request.job_id or None,
        type=request.type,
        priority=priority_from_pb(request.priority, f"{field_prefix}priority"),
        payload=_payload(request, f"{field_prefix}payload") if request.HasField("payload") else None,
        max_attempts=request.max_attempts if request.HasField("max_attempts") else None,
        timeout_seconds=request.timeout_seconds if request.HasField("timeout_seconds") else None,
        run_at=_datetime(request.run_at, f"{field_prefix}run_at") if request.HasField("run_at") else None,
        labels=dict(request.labels),
        unique_key=request.unique_key or None,
        unique_for=_timedelta(request.unique_for, f"{field_prefix}unique_for")
        if request.HasField("unique_for")
        else None,
        concurrency_key=request.concurrency_key or None,
        concurrency_limit=request.concurrency_limit if request.HasField("concurrency_limit") else None,
    )


def _timedelta(duration: duration_pb2.Duration, field: str) -> timedelta:
    try:
        return duration.ToTimedelta()
    except (ValueError, OverflowError):
        raise InvalidArgument(field, "is not a valid duration") from None


def _payload(request: jobs_pb2.SubmitJobRequest, field: str) -> dict[str, Any]:
    try:
        return json_format.MessageToDict(request.payload)
    except ValueError:  # protobuf refuses to turn NaN or an infinity into JSON
        raise InvalidArgument(field, "must hold finite numbers only (JSON has no NaN or Infinity)") from None


def _datetime(stamp: timestamp_pb2.Timestamp, field: str) -> datetime:
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidArgument(field, "is not a valid timestamp") from None


def filter_from_pb(
    request: jobs_pb2.ListJobsRequest | jobs_pb2.CancelJobsRequest | jobs_pb2.RetryJobsRequest,
) -> JobFilter:
    """The filter fields ListJobs, CancelJobs and RetryJobs share (same names and numbers)."""
    return JobFilter(
        state=state_from_pb(request.state),
        priority=priority_from_pb(request.priority),
        type=request.type or None,
        labels=dict(request.labels),
        created_after=_datetime(request.created_after, "created_after")
        if request.HasField("created_after")
        else None,
        created_before=(
            _datetime(request.created_before, "created_before")
            if request.HasField("created_before")
            else None
        ),
        job_id_prefix=request.job_id_prefix or None,
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
        progress_percent=job.progress_percent,
        progress_message=job.progress_message,
        labels=job.labels,
        concurrency_key=job.concurrency_key,
        concurrency_limit=job.concurrency_limit,
    )


def event_to_pb(event: JobEvent, labels: dict[str, str]) -> jobs_pb2.JobEvent:
    """`labels` are the job's (they never change, so WatchJob reads them once)."""
    return jobs_pb2.JobEvent(
        job_id=event.job_id,
        state=state_to_pb(event.state),
        attempt=event.attempt,
        at=_timestamp(event.at),
        message=event.message,
        progress_percent=event.progress_percent,
        labels=labels,
    )


def log_line_to_pb(line: LogLine) -> jobs_pb2.LogLine:
    return jobs_pb2.LogLine(
        at=_timestamp(line.at), level=line.level, attempt=line.attempt, message=line.message
    )


def queue_stats_to_pb(stats: QueueStats) -> jobs_pb2.GetQueueStatsResponse:
    return jobs_pb2.GetQueueStatsResponse(
        queues=[
            jobs_pb2.QueueDepth(queue=priority.value, priority=_PRIORITY_TO_PB[priority], depth=depth)
            for priority, depth in stats.depths.items()
        ],
        dead_letter=stats.dead_letter,
        scheduled=stats.scheduled,
        workers=stats.workers,
    )


# From protobuf, for clients (`grpc_gateway.client`).


def priority_to_pb(priority: Priority) -> jobs_pb2.Priority:
    return _PRIORITY_TO_PB[priority]


def _optional_datetime(message: Any, field: str) -> datetime | None:
    return getattr(message, field).ToDatetime(tzinfo=UTC) if message.HasField(field) else None


def job_from_pb(job: jobs_pb2.Job) -> Job:
    """A `Job` as a client sees it (`seq` and `fingerprint` are the server's and read 0 and "")."""
    return Job(
        job_id=job.job_id,
        type=job.type,
        priority=_PRIORITY_FROM_PB.get(job.priority, Priority.DEFAULT),
        state=_STATE_FROM_PB[job.state],
        payload=json_format.MessageToDict(job.payload),
        result=json_format.MessageToDict(job.result) if job.HasField("result") else None,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        last_error=job.last_error,
        timeout_seconds=job.timeout_seconds,
        created_at=job.created_at.ToDatetime(tzinfo=UTC),
        updated_at=job.updated_at.ToDatetime(tzinfo=UTC),
        scheduled_at=job.scheduled_at.ToDatetime(tzinfo=UTC),
        started_at=_optional_datetime(job, "started_at"),
        finished_at=_optional_datetime(job, "finished_at"),
        worker=job.worker,
        seq=0,
        fingerprint="",
        progress_percent=job.progress_percent if job.HasField("progress_percent") else None,
        progress_message=job.progress_message,
        labels=dict(job.labels),
        concurrency_key=job.concurrency_key,
        concurrency_limit=job.concurrency_limit,
    )


def event_from_pb(event: jobs_pb2.JobEvent) -> JobEvent:
    return JobEvent(
        job_id=event.job_id,
        state=_STATE_FROM_PB[event.state],
        attempt=event.attempt,
        at=event.at.ToDatetime(tzinfo=UTC),
        message=event.message,
        progress_percent=event.progress_percent if event.HasField("progress_percent") else None,
    )


def log_line_from_pb(line: jobs_pb2.LogLine) -> LogLine:
    return LogLine(
        at=line.at.ToDatetime(tzinfo=UTC), level=line.level, attempt=line.attempt, message=line.message
    )


def queue_stats_from_pb(stats: jobs_pb2.GetQueueStatsResponse) -> QueueStats:
    return QueueStats(
        depths={_PRIORITY_FROM_PB[queue.priority]: queue.depth for queue in stats.queues},
        dead_letter=stats.dead_letter,
        scheduled=stats.scheduled,
        workers=list(stats.workers),
    )


# Schedules, both ways (the gateway reads definitions and answers schedules; clients the other way round).

_OVERLAP_FROM_PB = {
    jobs_pb2.OVERLAP_UNSPECIFIED: Overlap.SKIP,
    jobs_pb2.OVERLAP_SKIP: Overlap.SKIP,
    jobs_pb2.OVERLAP_ALLOW: Overlap.ALLOW,
}
_OVERLAP_TO_PB = {Overlap.SKIP: jobs_pb2.OVERLAP_SKIP, Overlap.ALLOW: jobs_pb2.OVERLAP_ALLOW}
_CATCH_UP_FROM_PB = {
    jobs_pb2.CATCH_UP_UNSPECIFIED: CatchUp.LATEST,
    jobs_pb2.CATCH_UP_LATEST: CatchUp.LATEST,
    jobs_pb2.CATCH_UP_SKIP: CatchUp.SKIP,
}
_CATCH_UP_TO_PB = {CatchUp.LATEST: jobs_pb2.CATCH_UP_LATEST, CatchUp.SKIP: jobs_pb2.CATCH_UP_SKIP}


def schedule_spec_from_pb(schedule: jobs_pb2.Schedule) -> ScheduleSpec:
    """A definition; its output-only fields are ignored."""
    if schedule.overlap not in _OVERLAP_FROM_PB:
        raise InvalidArgument("schedule.overlap", f"unknown value {schedule.overlap}")
    if schedule.catch_up not in _CATCH_UP_FROM_PB:
        raise InvalidArgument("schedule.catch_up", f"unknown value {schedule.catch_up}")
    return ScheduleSpec(
        name=schedule.name,
        job=submit_request_from_pb(schedule.job, "job."),
        cron=schedule.cron,
        time_zone=schedule.time_zone or "UTC",
        interval=_timedelta(schedule.interval, "interval") if schedule.HasField("interval") else None,
        overlap=_OVERLAP_FROM_PB[schedule.overlap],
        catch_up=_CATCH_UP_FROM_PB[schedule.catch_up],
        paused=schedule.paused,
    )


def schedule_spec_to_pb(spec: ScheduleSpec) -> jobs_pb2.Schedule:
    job = spec.job
    template = jobs_pb2.SubmitJobRequest(type=job.type, labels=job.labels or {})
    if job.priority is not None:
        template.priority = _PRIORITY_TO_PB[job.priority]
    if job.payload is not None:
        template.payload.update(job.payload)
    if job.max_attempts is not None:
        template.max_attempts = job.max_attempts
    if job.timeout_seconds is not None:
        template.timeout_seconds = job.timeout_seconds
    if job.concurrency_key is not None:
        template.concurrency_key = job.concurrency_key
    if job.concurrency_limit is not None:
        template.concurrency_limit = job.concurrency_limit
    schedule = jobs_pb2.Schedule(
        name=spec.name,
        cron=spec.cron,
        time_zone=spec.time_zone,
        job=template,
        overlap=_OVERLAP_TO_PB[spec.overlap],
        catch_up=_CATCH_UP_TO_PB[spec.catch_up],
        paused=spec.paused,
    )
    if spec.interval is not None:
        schedule.interval.FromTimedelta(spec.interval)
    return schedule


def schedule_to_pb(schedule: Schedule) -> jobs_pb2.Schedule:
    answer = schedule_spec_to_pb(schedule.spec)
    answer.next_fire_at.FromDatetime(schedule.next_fire_at)
    if schedule.last_fire_at is not None:
        answer.last_fire_at.FromDatetime(schedule.last_fire_at)
    answer.last_job_id = schedule.last_job_id
    answer.fired, answer.skipped, answer.missed = schedule.fired, schedule.skipped, schedule.missed
    answer.created_at.FromDatetime(schedule.created_at)
    answer.updated_at.FromDatetime(schedule.updated_at)
    return answer


def schedule_from_pb(schedule: jobs_pb2.Schedule) -> Schedule:
    """A schedule as a client sees it."""
    return Schedule(
        spec=schedule_spec_from_pb(schedule),
        next_fire_at=schedule.next_fire_at.ToDatetime(tzinfo=UTC),
        created_at=schedule.created_at.ToDatetime(tzinfo=UTC),
        updated_at=schedule.updated_at.ToDatetime(tzinfo=UTC),
        last_fire_at=_optional_datetime(schedule, "last_fire_at"),
        last_job_id=schedule.last_job_id,
        fired=schedule.fired,
        skipped=schedule.skipped,
        missed=schedule.missed,
    )


def type_control_to_pb(control: FlowControl) -> jobs_pb2.TypeControl:
    answer = jobs_pb2.TypeControl(
        type=control.type, max_running=control.max_running, paused=control.paused, rate=control.rate
    )
    if control.rate is not None:
        answer.rate_interval.FromTimedelta(timedelta(seconds=control.rate_seconds))
    return answer


def queue_control_to_pb(control: FlowControl) -> jobs_pb2.QueueControl:
    assert control.queue is not None
    return jobs_pb2.QueueControl(queue=_PRIORITY_TO_PB[control.queue], paused=control.paused)


def key_control_to_pb(control: FlowControl) -> jobs_pb2.KeyControl:
    answer = jobs_pb2.KeyControl(key=control.key, rate=control.rate)
    if control.rate is not None:
        answer.rate_interval.FromTimedelta(timedelta(seconds=control.rate_seconds))
    return answer


def flow_control_from_pb(
    control: jobs_pb2.TypeControl | jobs_pb2.QueueControl | jobs_pb2.KeyControl,
) -> FlowControl:
    if isinstance(control, jobs_pb2.QueueControl):
        return FlowControl(queue_scope(_PRIORITY_FROM_PB[control.queue]), paused=control.paused)
    if isinstance(control, jobs_pb2.KeyControl):
        return FlowControl(
            key_scope(control.key),
            rate=control.rate if control.HasField("rate") else None,
            rate_seconds=control.rate_interval.ToTimedelta().total_seconds()
            if control.HasField("rate_interval")
            else 1.0,
        )
    return FlowControl(
        type_scope(control.type),
        max_running=control.max_running if control.HasField("max_running") else None,
        paused=control.paused,
        rate=control.rate if control.HasField("rate") else None,
        rate_seconds=control.rate_interval.ToTimedelta().total_seconds()
        if control.HasField("rate_interval")
        else 1.0,
    )


def rate_seconds_from_pb(request: jobs_pb2.SetTypeLimitRequest | jobs_pb2.SetKeyRateRequest) -> float:
    if not request.HasField("rate_interval"):
        return 1.0
    return _timedelta(request.rate_interval, "rate_interval").total_seconds()


def queue_from_pb(value: int) -> Priority:
    """A queue to pause or resume: unspecified is not one."""
    priority = priority_from_pb(value, "queue")
    if priority is None:
        raise InvalidArgument("queue", "is required")
    return priority


_WAIT_CODE_TO_PB = {
    WaitCode.SCHEDULED: jobs_pb2.WAIT_CODE_SCHEDULED,
    WaitCode.QUEUED: jobs_pb2.WAIT_CODE_QUEUED,
    WaitCode.KEY_LIMIT: jobs_pb2.WAIT_CODE_KEY_LIMIT,
    WaitCode.TYPE_LIMIT: jobs_pb2.WAIT_CODE_TYPE_LIMIT,
    WaitCode.PAUSED: jobs_pb2.WAIT_CODE_PAUSED,
    WaitCode.RATE_LIMIT: jobs_pb2.WAIT_CODE_RATE_LIMIT,
    WaitCode.BACKING_OFF: jobs_pb2.WAIT_CODE_BACKING_OFF,
    WaitCode.RUNNING: jobs_pb2.WAIT_CODE_RUNNING,
    WaitCode.NO_WORKER: jobs_pb2.WAIT_CODE_NO_WORKER,
    WaitCode.FINISHED: jobs_pb2.WAIT_CODE_FINISHED,
}


_WAIT_CODE_FROM_PB = {value: code for code, value in _WAIT_CODE_TO_PB.items()}


def wait_code_from_pb(value: int) -> WaitCode:
    try:
        return _WAIT_CODE_FROM_PB[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument("code", f"unknown wait code {value}") from None


def explanation_to_pb(explanation: Explanation) -> jobs_pb2.ExplainJobResponse:
    answer = jobs_pb2.ExplainJobResponse(
        job_id=explanation.job.job_id,
        state=state_to_pb(explanation.job.state),
        code=_WAIT_CODE_TO_PB[explanation.code],
        reason=explanation.reason,
        blocking_job_ids=explanation.blocking_job_ids,
        ahead=explanation.ahead,
        worker=explanation.worker,
    )
    if explanation.until is not None:
        answer.until.FromDatetime(explanation.until)
    return answer

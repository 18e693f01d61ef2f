"""The one mapping between rows of the job tables and taskapp's values, for every store.

A row of `jobs` has a column for each field of `Job`, under the same name; these functions are the only places
that know how a value is stored (enums as their values, times in UTC). Free of SQLAlchemy, so the in-memory
store builds its jobs the same way.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from taskapp.jobs import Job, JobEvent, JobState, LogLine, NewJob, Priority, SubmitRequest, WaitReason
from taskapp.schedules import CatchUp, Overlap, Schedule, ScheduleSpec

#: A job's columns, in the order of `Job`'s fields (the two have the same names).
JOB_COLUMNS = tuple(field.name for field in dataclasses.fields(Job))
_TIME_COLUMNS = tuple(
    name for name, kind in typing.get_type_hints(Job).items() if datetime in (kind, *typing.get_args(kind))
)


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time taskapp stores is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def job_from_row(row: Mapping[Any, Any]) -> Job:
    """A `jobs` row (any mapping of its columns) as a `Job`."""
    values = {name: row[name] for name in JOB_COLUMNS}
    values["priority"] = Priority(values["priority"])
    values["state"] = JobState(values["state"])
    values["waiting_for"] = WaitReason(values["waiting_for"])
    for name in _TIME_COLUMNS:
        values[name] = aware(values[name])
    return Job(**values)


def new_job_row(new: NewJob, now: datetime) -> dict[str, Any]:
    """Every column of a new job's row but `seq`, which the database numbers."""
    return {
        "job_id": new.job_id,
        "type": new.type,
        "priority": new.priority.value,
        "state": new.first_state(now).value,
        "payload": new.payload,
        "result": None,
        "attempts": 0,
        "max_attempts": new.max_attempts,
        "last_error": "",
        "timeout_seconds": new.timeout_seconds,
        "created_at": now,
        "updated_at": now,
        "scheduled_at": new.waits_until(now) or now,
        "started_at": None,
        "finished_at": None,
        "worker": "",
        "fingerprint": new.fingerprint,
        "lease_expires_at": None,
        "published_at": None,
        "progress_percent": None,
        "progress_message": "",
        "runs": 0,
        "task_id": "",
        "labels": new.labels,
        "concurrency_key": new.concurrency_key,
        "concurrency_limit": new.concurrency_limit,
        "waiting_for": WaitReason.NONE.value,
        "fair_rank": 0,
        "flow_limited": False,
    }


def event_from_row(row: Mapping[Any, Any]) -> JobEvent:
    at = aware(row["at"])
    assert at is not None
    return JobEvent(
        job_id=row["job_id"],
        state=JobState(row["state"]),
        attempt=row["attempt"],
        at=at,
        message=row["message"],
        progress_percent=row["progress"],
        seq=row["seq"],
    )


def log_line_from_row(row: Mapping[Any, Any]) -> LogLine:
    at = aware(row["at"])
    assert at is not None
    return LogLine(at=at, level=row["level"], attempt=row["attempt"], message=row["message"])


def schedule_row(schedule: Schedule) -> dict[str, Any]:
    """A schedule as its `schedules` row."""
    spec, job = schedule.spec, schedule.spec.job
    return {
        "name": spec.name,
        "cron": spec.cron,
        "time_zone": spec.time_zone,
        "interval_seconds": int(spec.interval.total_seconds()) if spec.interval else None,
        "job": {
            "type": job.type,
            "payload": job.payload,
            "priority": job.priority.value if job.priority else None,
            "max_attempts": job.max_attempts,
            "timeout_seconds": job.timeout_seconds,
            "labels": job.labels,
            "concurrency_key": job.concurrency_key,
            "concurrency_limit": job.concurrency_limit,
        },
        "overlap": spec.overlap.value,
        "catch_up": spec.catch_up.value,
        "paused": spec.paused,
        "next_fire_at": schedule.next_fire_at,
        "last_fire_at": schedule.last_fire_at,
        "last_job_id": schedule.last_job_id,
        "fired": schedule.fired,
        "skipped": schedule.skipped,
        "missed": schedule.missed,
        "created_at": schedule.created_at,
        "updated_at": schedule.updated_at,
    }


def schedule_from_row(row: Mapping[Any, Any]) -> Schedule:
    job = row["job"]
    spec = ScheduleSpec(
        name=row["name"],
        job=SubmitRequest(
            type=job["type"],
            payload=job["payload"],
            priority=Priority(job["priority"]) if job["priority"] else None,
            max_attempts=job["max_attempts"],
            timeout_seconds=job["timeout_seconds"],
            labels=job["labels"],
            concurrency_key=job.get("concurrency_key"),
            concurrency_limit=job.get("concurrency_limit"),
        ),
        cron=row["cron"],
        time_zone=row["time_zone"],
        interval=timedelta(seconds=row["interval_seconds"]) if row["interval_seconds"] else None,
        overlap=Overlap(row["overlap"]),
        catch_up=CatchUp(row["catch_up"]),
        paused=bool(row["paused"]),
    )
    return Schedule(
        spec=spec,
        next_fire_at=aware(row["next_fire_at"]),  # type: ignore[arg-type]
        created_at=aware(row["created_at"]),  # type: ignore[arg-type]
        updated_at=aware(row["updated_at"]),  # type: ignore[arg-type]
        last_fire_at=aware(row["last_fire_at"]),
        last_job_id=row["last_job_id"],
        fired=row["fired"],
        skipped=row["skipped"],
        missed=row["missed"],
    )

"""ExplainJob: why a job is not running, or what it is doing, in plain words and as a code, read from SQL.

Users of job queues otherwise guess: is it scheduled, behind other jobs, held by a limit, in back-off, or is no
worker that runs its type alive? Each case is one code, a sentence with the facts that make it so (the jobs
that hold a limit, the time a wait ends), and nothing that SQL does not say.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from taskapp.jobs import (
    TERMINAL_STATES,
    FlowControl,
    Job,
    JobState,
    WaitReason,
    WorkerBeat,
    queue_scope,
    scopes_of,
    type_scope,
)
from taskapp.store.port import JobStore

#: Running jobs named as holding a limit.
BLOCKING_SHOWN = 20


class WaitCode(enum.StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    KEY_LIMIT = "key_limit"
    TYPE_LIMIT = "type_limit"
    PAUSED = "paused"
    RATE_LIMIT = "rate_limit"
    BACKING_OFF = "backing_off"
    RUNNING = "running"
    NO_WORKER = "no_worker"
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class Explanation:
    job: Job
    code: WaitCode
    reason: str
    until: datetime | None = None
    blocking_job_ids: list[str] = field(default_factory=list)
    ahead: int = 0
    worker: str = ""


def _at(when: datetime | None) -> str:
    return "" if when is None else f"{when:%Y-%m-%d %H:%M:%S} UTC"


def explain(store: JobStore, job: Job, now: datetime, answering: list[WorkerBeat]) -> Explanation:
    """`job` as it is at `now`; `answering`: the workers heard from recently enough to count as alive."""
    attempt = f"attempt {job.attempts} of {job.max_attempts}"
    if job.state in TERMINAL_STATES:
        error = f": {job.last_error}" if job.last_error and job.state is not JobState.SUCCEEDED else ""
        reason = f"finished: {job.state.value} at {_at(job.finished_at or job.updated_at)}{error}"
        return Explanation(job, WaitCode.FINISHED, reason)
    if job.state is JobState.RUNNING:
        reason = (
            f"running on {job.worker} since {_at(job.started_at)} ({attempt}); "
            f"its lease is held until {_at(job.lease_expires_at)}"
        )
        return Explanation(job, WaitCode.RUNNING, reason, until=job.lease_expires_at, worker=job.worker)
    if job.state is JobState.SCHEDULED:
        return Explanation(
            job, WaitCode.SCHEDULED, f"scheduled for {_at(job.scheduled_at)}", job.scheduled_at
        )
    if job.state is JobState.RETRYING and job.scheduled_at > now:
        reason = f"in back-off after {attempt} failed ({job.last_error}), until {_at(job.scheduled_at)}"
        return Explanation(job, WaitCode.BACKING_OFF, reason, until=job.scheduled_at)
    if job.waiting_for is WaitReason.KEY_LIMIT:
        blocking = store.running_ids(type=None, key=job.concurrency_key, most=BLOCKING_SHOWN)
        reason = (
            f"waiting: its concurrency key {job.concurrency_key!r} runs its limit of {job.concurrency_limit} "
            f"job(s): {', '.join(blocking) or 'ending now'}"
        )
        return Explanation(job, WaitCode.KEY_LIMIT, reason, blocking_job_ids=blocking)
    if job.waiting_for is WaitReason.TYPE_LIMIT:
        [control] = store.flow_controls([type_scope(job.type)]) or [FlowControl(type_scope(job.type))]
        limit = control.max_running
        blocking = store.running_ids(type=job.type, key=None, most=BLOCKING_SHOWN)
        reason = (
            f"waiting: job type {job.type!r} runs its limit of {limit} job(s) (SetTypeLimit): "
            f"{', '.join(blocking) or 'ending now'}"
        )
        return Explanation(job, WaitCode.TYPE_LIMIT, reason, blocking_job_ids=blocking)
    if job.waiting_for is WaitReason.RATE_LIMIT:
        rated = [control for control in store.flow_controls(scopes_of(job)) if control.rate]
        said = " and ".join(
            f"{f'job type {control.type!r}' if control.type else f'key {control.key!r}'} starts "
            f"{control.rate} start(s) per {control.rate_seconds:g} s"
            for control in rated
        )
        reason = f"waiting: {said or 'a rate'}; its start comes at {_at(job.scheduled_at)}"
        return Explanation(job, WaitCode.RATE_LIMIT, reason, until=job.scheduled_at)
    if job.waiting_for is WaitReason.PAUSED:
        paused = store.flow_controls([type_scope(job.type), queue_scope(job.priority)])
        what = " and ".join(
            f"job type {job.type!r}" if control.type else f"the {job.priority.value} queue"
            for control in paused
        )
        reason = f"waiting: {what or 'its type or queue'} {'is' if len(paused) < 2 else 'are'} paused"
        return Explanation(job, WaitCode.PAUSED, reason)
    if not any(job.type in worker.types for worker in answering):
        others = f" ({len(answering)} worker(s) answer, none with it)" if answering else ""
        reason = f"no worker that has job type {job.type!r} loaded is answering{others}"
        return Explanation(job, WaitCode.NO_WORKER, reason)
    ahead = store.count_ahead(job)
    reason = (
        f"queued in the {job.priority.value} queue, behind {ahead} job(s) of higher or equal priority; "
        f"{len(answering)} worker(s) answering"
    )
    return Explanation(job, WaitCode.QUEUED, reason, ahead=ahead)

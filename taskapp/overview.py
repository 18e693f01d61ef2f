"""What an operator looks at first (the console's overview): work waiting and running, the last hour's
throughput minute by minute, the slowest job types, and the workers heard from lately."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from taskapp.broker_stats import BrokerStats
from taskapp.jobs import Activity, Job, JobFilter, JobState, Priority, WorkerBeat
from taskapp.store.port import JobStore

#: The span of the throughput chart and of the slowest types.
WINDOW = timedelta(hours=1)
#: A worker is answering while its last beat is younger than this many beat intervals.
MISSED_BEATS = 3
#: Workers silent for longer than this are no longer listed.
FORGET_WORKERS_AFTER = timedelta(days=1)
#: The running jobs the workers page lists at most.
MAX_RUNNING_LISTED = 1_000
#: States counted on the overview.
COUNTED_STATES = (
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.RETRYING,
    JobState.SCHEDULED,
    JobState.DEAD_LETTER,
)
#: Failures, for the chart: jobs that ended without succeeding and without being cancelled.
FAILED_STATES = frozenset({JobState.FAILED, JobState.DEAD_LETTER})


@dataclass(frozen=True, slots=True)
class Minute:
    at: datetime
    succeeded: int
    failed: int


@dataclass(frozen=True, slots=True)
class TypeTiming:
    type: str
    finished: int
    mean_seconds: float
    max_seconds: float


@dataclass(frozen=True, slots=True)
class Overview:
    #: Messages waiting per priority queue, highest first.
    waiting: dict[Priority, int]
    #: Jobs per state, for the states that are not the bulk of history (SUCCEEDED is left out).
    states: dict[JobState, int]
    minutes: list[Minute]
    slowest: list[TypeTiming]
    workers_answering: int


def per_minute(activity: Sequence[Activity], now: datetime) -> list[Minute]:
    """The last hour as 60 minutes, oldest first; a minute without an ended job counts zero."""
    end = now.replace(second=0, microsecond=0)
    counts = {end - timedelta(minutes=n): [0, 0] for n in range(59, -1, -1)}
    for row in activity:
        counted = counts.get(row.minute)
        if counted is None:
            continue
        if row.state is JobState.SUCCEEDED:
            counted[0] += row.count
        elif row.state in FAILED_STATES:
            counted[1] += row.count
    return [Minute(at, succeeded, failed) for at, (succeeded, failed) in counts.items()]


def slowest_types(activity: Sequence[Activity], limit: int = 5) -> list[TypeTiming]:
    """Job types by mean run time of the jobs that ended (cancelled ones aside), slowest first."""
    totals: dict[str, list[float]] = {}
    for row in activity:
        if row.state is JobState.CANCELLED:
            continue
        total = totals.setdefault(row.type, [0, 0.0, 0.0])
        total[0] += row.count
        total[1] += row.run_seconds
        total[2] = max(total[2], row.max_run_seconds)
    timings = [
        TypeTiming(type, int(count), seconds / count, longest)
        for type, (count, seconds, longest) in totals.items()
        if count
    ]
    return sorted(timings, key=lambda timing: -timing.mean_seconds)[:limit]


def answering(workers: Sequence[WorkerBeat], now: datetime, beat_seconds: float) -> list[WorkerBeat]:
    """The workers whose last beat is recent enough to count them as alive."""
    cutoff = now - timedelta(seconds=beat_seconds * MISSED_BEATS)
    return [worker for worker in workers if worker.seen_at >= cutoff]


def read_overview(
    store: JobStore, broker: BrokerStats | None, now: datetime, beat_seconds: float
) -> Overview:
    activity = store.activity(now.replace(second=0, microsecond=0) - WINDOW + timedelta(minutes=1))
    return Overview(
        waiting=broker.depths() if broker is not None else {},
        states=store.count_states(COUNTED_STATES),
        minutes=per_minute(activity, now),
        slowest=slowest_types(activity),
        workers_answering=len(answering(store.workers(now - FORGET_WORKERS_AFTER), now, beat_seconds)),
    )


@dataclass(frozen=True, slots=True)
class WorkerView:
    beat: WorkerBeat
    answering: bool
    running: list[Job]


def read_workers(store: JobStore, now: datetime, beat_seconds: float) -> list[WorkerView]:
    """Every worker heard from in the last day, with the jobs SQL says it runs now."""
    workers = store.workers(now - FORGET_WORKERS_AFTER)
    alive = {worker.name for worker in answering(workers, now, beat_seconds)}
    running: dict[str, list[Job]] = {}
    for job in store.list(JobFilter(state=JobState.RUNNING), MAX_RUNNING_LISTED, None):
        running.setdefault(job.worker, []).append(job)
    return [WorkerView(worker, worker.name in alive, running.get(worker.name, [])) for worker in workers]

"""Job metrics for Prometheus, counted where SQL records what happened to a job.

`record_changes` is a change hook of the store (`open_store(url, change_hooks=...)`): every committed change of a
job's state passes through it, in whichever process made it (the gateway cancels, workers finish runs), so a
count here is a count of what SQL says, never of what a process merely tried. In a worker, whose pool processes
are separate processes, the values go to files that the worker's main process sums (`taskapp.worker_metrics`).

`QueueCollector` reads the broker and SQL when Prometheus scrapes: how much is waiting, never a stale copy.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from taskapp.broker_stats import BrokerStats
from taskapp.clock import utcnow
from taskapp.errors import TaskappError
from taskapp.jobs import JobChange, JobState, Priority, WaitingStats, WaitReason
from taskapp.routing import DEAD_LETTER_QUEUE, queue_for
from taskapp.store.port import JobStore

log = logging.getLogger(__name__)

JOBS_SUBMITTED = Counter("taskapp_jobs_submitted", "Jobs created through the gateway", ["type", "priority"])
JOBS_FINISHED = Counter(
    "taskapp_jobs_finished",
    "Jobs that reached a final state (SUCCEEDED, FAILED, DEAD_LETTER or CANCELLED)",
    ["type", "state"],
)
JOB_RETRIES = Counter("taskapp_job_retries", "Failed runs followed by another attempt (RETRYING)", ["type"])
JOB_RUN_SECONDS = Histogram(
    "taskapp_job_run_seconds",
    "How long a job's run took, from its claim to its outcome",
    ["type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3_600, 21_600),
)

JOB_WAIT_SECONDS = Histogram(
    "taskapp_job_wait_seconds",
    "How long a job waited to start, from when it was due (submitted, its run_at, the end of a back-off, the start "
    "its type's rate gave it) to its claim: what more workers, or higher limits, would shorten",
    ["type", "priority"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3_600, 21_600),
)
#: Each label set's child of the metrics every job updates, looked up once: prometheus-client's `labels()` costs as
#: much as the update it serves (~1 µs), on every job's way through the gateway and a worker.
jobs_submitted = functools.cache(JOBS_SUBMITTED.labels)
jobs_finished = functools.cache(JOBS_FINISHED.labels)
job_run_seconds = functools.cache(JOB_RUN_SECONDS.labels)
job_wait_seconds = functools.cache(JOB_WAIT_SECONDS.labels)

#: Concurrency keys shown with their waiting jobs: the ones with most, so the label set stays small.
TOP_KEYS = 10


def record_changes(changes: Sequence[JobChange]) -> None:
    """The store's change hook: count final states, retries, and the length of runs that ended."""
    for change in changes:
        if change.progress:
            continue
        if change.state.is_terminal:
            jobs_finished(change.type, change.state.value).inc()
        elif change.state is JobState.RETRYING:
            JOB_RETRIES.labels(change.type).inc()
        if change.run_seconds is not None:
            job_run_seconds(change.type).observe(change.run_seconds)


class QueueCollector(Collector):
    """Messages waiting in each priority queue (with kombu's priority sub-lists) and in `dead_letter`, and
    jobs waiting in SQL for their `run_at`, read at each scrape. A dependency that does not answer leaves its
    gauge out of that scrape (and /readyz says why) rather than failing the whole scrape."""

    def __init__(self, broker_stats: BrokerStats, store: JobStore) -> None:
        self.broker_stats = broker_stats
        self.store = store

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        depth = GaugeMetricFamily(
            "taskapp_queue_depth", "Messages waiting in a broker queue", labels=["queue"]
        )
        try:
            for priority, count in self.broker_stats.depths().items():
                depth.add_metric([queue_for(priority)], count)
            depth.add_metric([DEAD_LETTER_QUEUE], self.broker_stats.dead_letters())
        except TaskappError as exc:
            log.debug("queue depths left out of this scrape: %s", exc)
        else:
            yield depth
        try:
            scheduled = self.store.count_scheduled()
        except TaskappError as exc:
            log.debug("scheduled jobs left out of this scrape: %s", exc)
        else:
            yield GaugeMetricFamily(
                "taskapp_jobs_scheduled", "Jobs waiting in SQL for their run_at", scheduled
            )
        try:
            waiting = self.store.waiting_stats(TOP_KEYS)
        except TaskappError as exc:
            log.debug("flow control's lines left out of this scrape: %s", exc)
        else:
            yield from _waiting_families(waiting, utcnow())
        try:
            schedules = self.store.list_schedules()
        except TaskappError as exc:
            log.debug("schedules left out of this scrape: %s", exc)
            return
        counters = {
            "fired": CounterMetricFamily(
                "taskapp_schedule_firings", "Jobs a schedule's firings created", labels=["schedule"]
            ),
            "skipped": CounterMetricFamily(
                "taskapp_schedule_skipped_firings",
                "Firings skipped: the previous firing's job was unfinished (overlap skip), or the job could not "
                "be submitted (its type is gone, say)",
                labels=["schedule"],
            ),
            "missed": CounterMetricFamily(
                "taskapp_schedule_missed_firings",
                "Firings due while no scheduler ran (or more than a minute late) that did not run",
                labels=["schedule"],
            ),
        }
        for schedule in schedules:  # kept in SQL: they survive every process's restart
            for field, family in counters.items():
                family.add_metric([schedule.name], getattr(schedule, field))
        yield from counters.values()


def _waiting_families(waiting: WaitingStats, now: datetime) -> Iterable[GaugeMetricFamily]:
    by_reason = GaugeMetricFamily(
        "taskapp_jobs_waiting",
        "Jobs waiting in SQL for flow control (taskapp.flow), by reason: key_limit, type_limit, rate_limit, paused",
        labels=["reason"],
    )
    for reason in WaitReason:
        if reason.in_line:
            by_reason.add_metric([reason.value], waiting.by_reason.get(reason, 0))
    yield by_reason
    keys = GaugeMetricFamily(
        "taskapp_jobs_waiting_for_key",
        f"Jobs waiting in flow control's lines, for the {TOP_KEYS} concurrency keys with the most",
        labels=["key"],
    )
    for key, count in waiting.top_keys:
        keys.add_metric([key], count)
    yield keys
    oldest = GaugeMetricFamily(
        "taskapp_oldest_waiting_job_age_seconds",
        "Per queue, how long ago its oldest job that wants a run (not held by flow control) became due: 0 when none",
        labels=["queue"],
    )
    for priority in Priority:
        due = waiting.oldest_due.get(priority)
        oldest.add_metric([queue_for(priority)], max(0.0, (now - due).total_seconds()) if due else 0.0)
    yield oldest

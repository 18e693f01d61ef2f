"""`JobStore` in memory: the twin of the SQL store for fast tests, with the same guarded transitions, events and
change hooks, and no I/O. The store contract tests run on it as on SQLite and PostgreSQL."""

from __future__ import annotations

import builtins
import dataclasses
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from taskapp import rates
from taskapp.jobs import (
    CANCELLABLE_STATES,
    RETRYABLE_BY_REQUEST,
    START_LOOKAHEAD,
    TERMINAL_STATES,
    Activity,
    CancelOutcome,
    FlowControl,
    Job,
    JobChange,
    JobEvent,
    JobFilter,
    JobState,
    LogLine,
    NewJob,
    Priority,
    SentMessage,
    WaitingStats,
    WaitReason,
    WorkerBeat,
    check_run_failure,
    queue_scope,
    scopes_of,
    type_scope,
    wants_a_run,
)
from taskapp.schedules import Schedule
from taskapp.store.port import ChangeHook
from taskapp.store.rows import job_from_row, new_job_row


class InMemoryJobStore:
    """One lock makes each call atomic, as a transaction would."""

    def __init__(self, change_hooks: Sequence[ChangeHook] = ()) -> None:
        self.change_hooks = tuple(change_hooks)
        #: The rows, by job id.
        self.jobs: dict[str, Job] = {}
        self.events: list[JobEvent] = []
        self.log_lines: dict[str, list[LogLine]] = {}
        self._seq = 0
        self._event_seq = 0
        self.beats: dict[str, WorkerBeat] = {}
        self.schedules: dict[str, Schedule] = {}
        #: Unique key -> (the job holding it, until when; None: until that job has finished).
        self.unique_keys: dict[str, tuple[str, datetime | None]] = {}
        self.flow_controls_by_scope: dict[str, FlowControl] = {}
        self._lock = threading.Lock()

    # Writing a change: the job's new value, its event, and what the change hooks hear after the "commit".

    def _record(
        self,
        job: Job,
        now: datetime,
        changes: list[JobChange],
        message: str = "",
        progress: int | None = None,
        run_started: datetime | None = None,
    ) -> None:
        self.jobs[job.job_id] = job
        self._event_seq += 1
        self.events.append(
            JobEvent(job.job_id, job.state, job.attempts, now, message, progress, seq=self._event_seq)
        )
        run_seconds = None if run_started is None else (now - run_started).total_seconds()
        changes.append(JobChange(job.job_id, job.type, job.state, progress is not None, run_seconds))

    def _announce(self, changes: list[JobChange]) -> None:
        if changes:
            for hook in self.change_hooks:
                hook(changes)

    def _running(self, job_id: str, attempt: int, lapsed_by: datetime | None = None) -> Job | None:
        job = self.jobs.get(job_id)
        if job is None or job.state is not JobState.RUNNING or job.attempts != attempt:
            return None
        if lapsed_by is not None and not (
            job.lease_expires_at is not None and job.lease_expires_at < lapsed_by
        ):
            return None
        return job

    # Reading.

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self.jobs.get(job_id)

    def list(self, filter: JobFilter, limit: int, before_seq: int | None) -> builtins.list[Job]:
        with self._lock:
            matching = [
                job
                for job in sorted(self.jobs.values(), key=lambda j: j.seq, reverse=True)
                if (filter.state is None or job.state is filter.state)
                and (filter.priority is None or job.priority is filter.priority)
                and (filter.type is None or job.type == filter.type)
                and filter.labels.items() <= job.labels.items()
                and (filter.created_after is None or job.created_at >= filter.created_after)
                and (filter.created_before is None or job.created_at < filter.created_before)
                and (filter.job_id_prefix is None or job.job_id.startswith(filter.job_id_prefix))
                and (before_seq is None or job.seq < before_seq)
            ]
        return matching[:limit]

    def latest_event(self, job_id: str) -> JobEvent | None:
        with self._lock:
            return next((event for event in reversed(self.events) if event.job_id == job_id), None)

    def events_after(self, job_id: str, after_seq: int) -> builtins.list[JobEvent]:
        with self._lock:
            return [event for event in self.events if event.job_id == job_id and event.seq > after_seq]

    def logs(self, job_id: str) -> builtins.list[LogLine]:
        with self._lock:
            return list(self.log_lines.get(job_id, ()))

    def count_scheduled(self) -> int:
        with self._lock:
            return sum(job.state is JobState.SCHEDULED for job in self.jobs.values())

    def count_states(self, states: Sequence[JobState]) -> dict[JobState, int]:
        with self._lock:
            jobs = list(self.jobs.values())
        return {state: sum(job.state is state for job in jobs) for state in states}

    def activity(self, since: datetime) -> builtins.list[Activity]:
        with self._lock:
            finished = [
                job
                for job in self.jobs.values()
                if job.state in TERMINAL_STATES and job.finished_at is not None and job.finished_at >= since
            ]
        groups: dict[tuple[datetime, str, JobState], list[float]] = {}
        for job in finished:
            assert job.finished_at is not None
            minute = job.finished_at.replace(second=0, microsecond=0)
            ran = (job.finished_at - job.started_at).total_seconds() if job.started_at else 0.0
            groups.setdefault((minute, job.type, job.state), []).append(ran)
        return [
            Activity(minute, type, state, len(runs), sum(runs), max(runs))
            for (minute, type, state), runs in groups.items()
        ]

    def workers(self, seen_since: datetime) -> builtins.list[WorkerBeat]:
        with self._lock:
            return sorted(
                (beat for beat in self.beats.values() if beat.seen_at >= seen_since), key=lambda b: b.name
            )

    def beat(self, worker: WorkerBeat) -> None:
        with self._lock:
            self.beats[worker.name] = worker

    # Schedules.

    def get_schedule(self, name: str) -> Schedule | None:
        with self._lock:
            return self.schedules.get(name)

    def list_schedules(self) -> builtins.list[Schedule]:
        with self._lock:
            return [self.schedules[name] for name in sorted(self.schedules)]

    def create_schedule(self, schedule: Schedule) -> Schedule:
        with self._lock:
            return self.schedules.setdefault(schedule.name, schedule)

    def update_schedule(self, schedule: Schedule) -> Schedule:
        with self._lock:
            stored = self.schedules.get(schedule.name)
            if stored is None:
                return schedule
            updated = self.schedules[schedule.name] = dataclasses.replace(
                stored, spec=schedule.spec, next_fire_at=schedule.next_fire_at, updated_at=schedule.updated_at
            )
            return updated

    def delete_schedule(self, name: str) -> bool:
        with self._lock:
            return self.schedules.pop(name, None) is not None

    def due_schedules(self, now: datetime, limit: int) -> builtins.list[Schedule]:
        with self._lock:
            due = [s for s in self.schedules.values() if s.next_fire_at <= now and not s.spec.paused]
        return sorted(due, key=lambda schedule: (schedule.next_fire_at, schedule.name))[:limit]

    def advance_schedule(self, schedule: Schedule, expected_next_fire_at: datetime) -> bool:
        with self._lock:
            stored = self.schedules.get(schedule.name)
            if stored is None or stored.next_fire_at != expected_next_fire_at:
                return False
            self.schedules[schedule.name] = dataclasses.replace(
                stored,
                next_fire_at=schedule.next_fire_at,
                last_fire_at=schedule.last_fire_at,
                last_job_id=schedule.last_job_id,
                fired=schedule.fired,
                skipped=schedule.skipped,
                missed=schedule.missed,
            )
            return True

    def ping(self) -> None:
        pass

    # Submitting, cancelling, retrying.

    def create_many(self, news: Sequence[NewJob], now: datetime) -> builtins.list[tuple[Job, bool]]:
        results: list[tuple[Job, bool]] = []
        with self._lock:
            for new in news:
                existing = self.jobs.get(new.job_id) or self._unique_key_holder(new, now)
                if existing is not None:
                    results.append((existing, False))
                    continue
                if new.unique_key is not None:
                    expires = now + new.unique_for if new.unique_for is not None else None
                    self.unique_keys[new.unique_key] = (new.job_id, expires)
                self._seq += 1
                job = job_from_row({**new_job_row(new, now), "seq": self._seq})
                self._record(job, now, changes=[])  # Creations are not announced.
                results.append((job, True))
        return results

    def _unique_key_holder(self, new: NewJob, now: datetime) -> Job | None:
        """The job holding `new`'s unique key: within its window, or without one while unfinished."""
        if new.unique_key is None or new.unique_key not in self.unique_keys:
            return None
        job_id, expires = self.unique_keys[new.unique_key]
        holder = self.jobs.get(job_id)
        if holder is None:
            return None
        if expires is not None:
            return holder if expires > now else None
        return None if holder.state in TERMINAL_STATES else holder

    def _let_go_of_keys(self, job_ids: set[str]) -> None:
        for key, (job_id, _) in list(self.unique_keys.items()):
            if job_id in job_ids:
                del self.unique_keys[key]

    def discard_many(self, job_ids: Sequence[str]) -> None:
        with self._lock:
            for job_id in job_ids:
                job = self.jobs.get(job_id)
                if (
                    job is not None
                    and job.state in (JobState.QUEUED, JobState.SCHEDULED)
                    and job.attempts == 0
                ):
                    del self.jobs[job_id]
                    self.events = [event for event in self.events if event.job_id != job_id]
                    self._let_go_of_keys({job_id})

    def mark_published(self, sent: Iterable[SentMessage], now: datetime) -> None:
        with self._lock:
            for message in sent:
                job = self.jobs.get(message.job_id)
                if job is not None and job.published_at is None and SentMessage.of(job) == message:
                    self.jobs[job.job_id] = dataclasses.replace(job, published_at=now)

    def cancel(self, job_id: str, now: datetime) -> CancelOutcome | None:
        changes: list[JobChange] = []
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            if job.state not in CANCELLABLE_STATES:
                return CancelOutcome(cancelled=False, previous_state=job.state, state=job.state)
            cancelled = dataclasses.replace(
                job, state=JobState.CANCELLED, updated_at=now, finished_at=now, lease_expires_at=None
            )
            self._record(cancelled, now, changes, "cancelled")
        self._announce(changes)
        running = job.task_id if job.state is JobState.RUNNING else ""
        return CancelOutcome(True, previous_state=job.state, state=JobState.CANCELLED, task_id=running)

    def requeue(self, job_id: str, now: datetime) -> tuple[Job, JobState] | None:
        changes: list[JobChange] = []
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None or job.state not in RETRYABLE_BY_REQUEST:
                return None
            requeued = dataclasses.replace(
                job,
                state=JobState.QUEUED,
                attempts=0,
                updated_at=now,
                scheduled_at=now,
                published_at=None,
                waiting_for=WaitReason.NONE,
            )
            self._record(requeued, now, changes, f"retry requested (was {job.state})")
        self._announce(changes)
        return requeued, job.state

    def requeue_many(self, job_ids: Sequence[str], now: datetime) -> builtins.list[tuple[Job, JobState]]:
        return [requeued for job_id in job_ids if (requeued := self.requeue(job_id, now)) is not None]

    def unqueue(self, job_id: str, back_to: JobState, now: datetime) -> None:
        changes: list[JobChange] = []
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None or job.state is not JobState.QUEUED or job.attempts != 0:
                return
            back = dataclasses.replace(job, state=back_to, updated_at=now)
            self._record(back, now, changes, "retry could not be published")
        self._announce(changes)

    # Runs.

    def claim(
        self, job_id: str, worker: str, now: datetime, lease_seconds: float, task_id: str
    ) -> Job | None:
        changes: list[JobChange] = []
        with self._lock:
            job = self.jobs.get(job_id)
            if (
                job is None
                or job.attempts >= job.max_attempts
                or not wants_a_run(job.state, job.scheduled_at, now, job.waiting_for)
            ):
                return None
            limited = job.concurrency_limit > 0 or any(
                scope in self.flow_controls_by_scope for scope in scopes_of(job)
            )
            reason = self._limit_reached(job) if limited else WaitReason.NONE
            start_at = now
            if limited and reason is WaitReason.NONE:
                controls = [self._control(scope) for scope in scopes_of(job)]
                start = rates.start_under(controls, now, job.waiting_for is WaitReason.RELEASED)
                for started in start.controls:
                    self._keep_starts(started)
                start_at = start.at
                if start.waits:
                    reason = WaitReason.RATE_LIMIT
            if reason is not WaitReason.NONE:
                scheduled_at = start_at if reason is WaitReason.RATE_LIMIT else job.scheduled_at
                self.jobs[job_id] = dataclasses.replace(
                    job,
                    waiting_for=reason,
                    fair_rank=self._turn(job),
                    published_at=job.published_at or now,
                    scheduled_at=scheduled_at,
                )
                return None
            claimed = dataclasses.replace(
                job,
                waiting_for=WaitReason.NONE,
                flow_limited=job.flow_limited or limited,
                state=JobState.RUNNING,
                attempts=job.attempts + 1,
                runs=job.runs + 1,
                task_id=task_id,
                started_at=start_at,
                finished_at=None,
                result=None,
                updated_at=now,
                worker=worker,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                progress_percent=None,
                progress_message="",
            )
            self._record(claimed, now, changes, worker)
        self._announce(changes)
        return claimed

    def _control(self, scope: str) -> FlowControl:
        return self.flow_controls_by_scope.get(scope, FlowControl(scope))

    def _limit_reached(self, job: Job) -> WaitReason:
        """The slots of the jobs let out of the line and on their way are theirs, not a newcomer's; nor is a slot
        that frees while a line waits for it (the run that freed it lets the line's next job out)."""
        if self._control(type_scope(job.type)).paused or self._control(queue_scope(job.priority)).paused:
            return WaitReason.PAUSED
        newcomer = job.waiting_for is WaitReason.NONE
        max_running = self._control(type_scope(job.type)).max_running
        if max_running is not None and (
            self._busy(type=job.type, besides=job.job_id) >= max_running
            or (newcomer and self._line_waits(WaitReason.TYPE_LIMIT, type=job.type))
        ):
            return WaitReason.TYPE_LIMIT
        if job.concurrency_limit and (
            self._busy(key=job.concurrency_key, besides=job.job_id) >= job.concurrency_limit
            or (newcomer and self._line_waits(WaitReason.KEY_LIMIT, key=job.concurrency_key))
        ):
            return WaitReason.KEY_LIMIT
        return WaitReason.NONE

    def _line_waits(self, reason: WaitReason, *, type: str | None = None, key: str | None = None) -> bool:
        """Whether jobs of `type` or `key` wait in a line for `reason`."""
        return any(
            job.waiting_for is reason
            and job.state in (JobState.QUEUED, JobState.RETRYING)
            and (type is None or job.type == type)
            and (key is None or job.concurrency_key == key)
            for job in self.jobs.values()
        )

    def _keep_starts(self, control: FlowControl) -> None:
        if control.scope in self.flow_controls_by_scope:
            self.flow_controls_by_scope[control.scope] = control

    def _busy(self, *, type: str | None = None, key: str | None = None, besides: str = "") -> int:
        """Running jobs of `type` or `key`, and those let out of a line and not claimed yet (but `besides`)."""
        return sum(
            (type is None or job.type == type)
            and (key is None or job.concurrency_key == key)
            and (
                job.state is JobState.RUNNING
                or (
                    job.waiting_for is WaitReason.RELEASED
                    and job.state in (JobState.QUEUED, JobState.RETRYING)
                    and job.job_id != besides
                )
            )
            for job in self.jobs.values()
        )

    def _in_line(self, type: str) -> builtins.list[Job]:
        return [
            job
            for job in self.jobs.values()
            if job.type == type
            and job.waiting_for.in_line
            and job.state in (JobState.QUEUED, JobState.RETRYING)
        ]

    def _turn(self, job: Job) -> int:
        line = self._in_line(job.type)
        reached = min((other.fair_rank for other in line), default=0)
        mine = [other.fair_rank for other in line if other.concurrency_key == job.concurrency_key]
        return max(reached, max(mine) + 1 if mine else 0)

    def _catch_up_starts(self, type: str, now: datetime) -> None:
        """As the SQL store's: late given starts move later, all alike."""
        control = self._control(type_scope(type))
        spacing = control.start_spacing
        given = [job for job in self._in_line(type) if job.waiting_for is WaitReason.RATE_LIMIT]
        earliest = min((job.scheduled_at for job in given), default=now)
        if spacing is None or earliest >= now - spacing:
            return
        late = now - earliest
        for job in given:
            self.jobs[job.job_id] = dataclasses.replace(job, scheduled_at=job.scheduled_at + late)
        next_start_at = (control.next_start_at or now) + late
        self.flow_controls_by_scope[control.scope] = dataclasses.replace(control, next_start_at=next_start_at)

    def let_out(self, type: str, now: datetime, most: int) -> builtins.list[Job]:
        with self._lock:
            self._catch_up_starts(type, now)
            control = self._control(type_scope(type))
            if control.paused:
                return []
            room = most
            if control.max_running is not None:
                room = min(room, control.max_running - self._busy(type=type))
            priorities = list(Priority)
            line = sorted(
                (
                    job
                    for job in self._in_line(type)
                    if not self._control(queue_scope(job.priority)).paused
                    and (
                        job.waiting_for is not WaitReason.RATE_LIMIT
                        or job.scheduled_at <= now + START_LOOKAHEAD
                    )
                ),
                key=lambda job: (priorities.index(job.priority), job.fair_rank, job.seq),
            )
            rate_limited = control.start_spacing is not None
            starts = 1 if (control.next_start_at or now) <= now else 0
            key_room: dict[str, int] = {}
            chosen: list[Job] = []
            for job in line:
                if len(chosen) >= room:
                    break
                if rate_limited and job.waiting_for is not WaitReason.RATE_LIMIT:
                    start_at, given = rates.give_start(self._control(type_scope(type)), now)
                    if not starts or start_at > now:
                        continue
                    self._keep_starts(given)
                    starts = 0
                if job.concurrency_limit:
                    key = job.concurrency_key
                    if key not in key_room:
                        busy = self._busy(key=key)
                        key_room[key] = job.concurrency_limit - busy
                    if key_room[key] <= 0:
                        continue
                    key_room[key] -= 1
                released = dataclasses.replace(
                    job, waiting_for=WaitReason.RELEASED, published_at=None, updated_at=now
                )
                self.jobs[job.job_id] = released
                chosen.append(released)
            return chosen

    def running_ids(self, *, type: str | None, key: str | None, most: int) -> builtins.list[str]:
        with self._lock:
            running = [
                job
                for job in self.jobs.values()
                if job.state is JobState.RUNNING
                and (type is None or job.type == type)
                and (key is None or job.concurrency_key == key)
            ]
        return [job.job_id for job in sorted(running, key=lambda job: job.started_at or job.created_at)][
            :most
        ]

    def count_ahead(self, job: Job) -> int:
        rank = list(Priority).index
        with self._lock:
            return sum(
                other.state is JobState.QUEUED
                and not other.waiting_for.in_line
                and (rank(other.priority), other.seq) < (rank(job.priority), job.seq)
                for other in self.jobs.values()
            )

    def waiting_stats(self, top_keys: int) -> WaitingStats:
        with self._lock:
            jobs = sorted(self.jobs.values(), key=lambda job: job.seq)
        in_line = [
            job
            for job in jobs
            if job.waiting_for.in_line and job.state in (JobState.QUEUED, JobState.RETRYING)
        ]
        by_reason: dict[WaitReason, int] = {}
        keys: dict[str, int] = {}
        for job in in_line:
            by_reason[job.waiting_for] = by_reason.get(job.waiting_for, 0) + 1
            if job.concurrency_key:
                keys[job.concurrency_key] = keys.get(job.concurrency_key, 0) + 1
        oldest: dict[Priority, datetime] = {}
        for job in jobs:
            if job.state is JobState.QUEUED and not job.waiting_for.in_line:
                oldest.setdefault(job.priority, job.scheduled_at)
        top = sorted(keys.items(), key=lambda item: (-item[1], item[0]))[:top_keys]
        return WaitingStats(by_reason=by_reason, top_keys=top, oldest_due=oldest)

    def types_in_line(self) -> builtins.list[str]:
        with self._lock:
            return sorted(
                {
                    job.type
                    for job in self.jobs.values()
                    if job.waiting_for.in_line and job.state in (JobState.QUEUED, JobState.RETRYING)
                }
            )

    def flow_controls(self, scopes: Sequence[str] | None = None) -> builtins.list[FlowControl]:
        with self._lock:
            found = self.flow_controls_by_scope
            return [found[scope] for scope in sorted(found) if scopes is None or scope in scopes]

    def put_flow_control(self, control: FlowControl) -> None:
        with self._lock:
            if control.idle:
                self.flow_controls_by_scope.pop(control.scope, None)
            else:
                self.flow_controls_by_scope[control.scope] = control

    def succeed(self, job_id: str, attempt: int, result: Any, now: datetime) -> bool:
        changes: list[JobChange] = []
        with self._lock:
            job = self._running(job_id, attempt)
            if job is None:
                return False
            done = dataclasses.replace(
                job,
                state=JobState.SUCCEEDED,
                result=result,
                updated_at=now,
                finished_at=now,
                lease_expires_at=None,
            )
            self._record(done, now, changes, run_started=job.started_at)
        self._announce(changes)
        return True

    def fail_run(
        self,
        job_id: str,
        attempt: int,
        outcome: JobState,
        error: str,
        now: datetime,
        *,
        retry_at: datetime | None = None,
        lapsed: bool = False,
    ) -> bool:
        check_run_failure(outcome, retry_at)
        changes: list[JobChange] = []
        with self._lock:
            job = self._running(job_id, attempt, now if lapsed else None)
            if job is None:
                return False
            failed = dataclasses.replace(
                job,
                state=outcome,
                last_error=error,
                updated_at=now,
                lease_expires_at=None,
                published_at=None,
                finished_at=now if retry_at is None else job.finished_at,
                scheduled_at=job.scheduled_at if retry_at is None else retry_at,
            )
            self._record(failed, now, changes, error, run_started=job.started_at)
        self._announce(changes)
        return True

    def renew_leases(
        self, worker: str, task_ids: Mapping[str, str], now: datetime, lease_seconds: float
    ) -> set[str]:
        renewed: set[str] = set()
        with self._lock:
            for job_id, task_id in task_ids.items():
                job = self.jobs.get(job_id)
                if (
                    job is not None
                    and job.state is JobState.RUNNING
                    and (job.worker, job.task_id) == (worker, task_id)
                    and job.lease_expires_at is not None
                    and job.lease_expires_at >= now
                ):
                    self.jobs[job_id] = dataclasses.replace(
                        job, lease_expires_at=now + timedelta(seconds=lease_seconds)
                    )
                    renewed.add(job_id)
        return renewed

    def release(self, job_id: str, worker: str, now: datetime) -> bool:
        changes: list[JobChange] = []
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None or job.state is not JobState.RUNNING or job.worker != worker:
                return False
            released = dataclasses.replace(
                job,
                state=JobState.QUEUED,
                attempts=job.attempts - 1,
                updated_at=now,
                started_at=None,
                lease_expires_at=None,
                published_at=now,
            )
            self._record(released, now, changes, "returned to the queue: worker shut down")
        self._announce(changes)
        return True

    def report_progress(self, job_id: str, attempt: int, percent: int, message: str, now: datetime) -> bool:
        changes: list[JobChange] = []
        with self._lock:
            job = self._running(job_id, attempt)
            if job is None:
                return False
            reported = dataclasses.replace(job, progress_percent=percent, progress_message=message)
            self._record(reported, now, changes, message, progress=percent)
        self._announce(changes)
        return True

    def log_usage(self, job_id: str) -> tuple[int, int]:
        with self._lock:
            lines = self.log_lines.get(job_id, [])
            return len(lines), sum(len(line.message) for line in lines)

    def append_logs(self, job_id: str, lines: Sequence[LogLine]) -> None:
        with self._lock:
            self.log_lines.setdefault(job_id, []).extend(lines)

    # Upkeep.

    def promote_due(self, now: datetime, limit: int) -> builtins.list[Job]:
        changes: list[JobChange] = []
        with self._lock:
            due = sorted(
                (
                    job
                    for job in self.jobs.values()
                    if job.state is JobState.SCHEDULED and job.scheduled_at <= now
                ),
                key=lambda job: job.scheduled_at,
            )[:limit]
            promoted = [
                dataclasses.replace(job, state=JobState.QUEUED, updated_at=now, published_at=None)
                for job in due
            ]
            for job in promoted:
                self._record(job, now, changes)
        self._announce(changes)
        return promoted

    def owed(self, now: datetime, written_before: datetime, limit: int) -> builtins.list[Job]:
        with self._lock:
            owed = [
                job
                for job in self.jobs.values()
                if job.published_at is None
                and (
                    (job.state is JobState.QUEUED and job.updated_at < written_before)
                    or (job.state is JobState.RETRYING and job.scheduled_at <= now)
                )
            ]
        return sorted(owed, key=lambda job: job.scheduled_at)[:limit]

    def lapsed_runs(self, now: datetime, limit: int) -> builtins.list[Job]:
        with self._lock:
            lapsed = [
                job
                for job in self.jobs.values()
                if job.state is JobState.RUNNING
                and job.lease_expires_at is not None
                and job.lease_expires_at < now
            ]
        return sorted(lapsed, key=lambda job: job.lease_expires_at or now)[:limit]

    def expected_messages(self, now: datetime, published_before: datetime) -> tuple[int, int]:
        with self._lock:
            jobs = list(self.jobs.values())
        waiting = sum(
            wants_a_run(job.state, job.scheduled_at, now, job.waiting_for)
            and job.published_at is not None
            and job.published_at < published_before
            for job in jobs
        )
        return waiting, sum(job.state is JobState.RUNNING for job in jobs)

    def awaiting_run(
        self, now: datetime, published_before: datetime, written_before: datetime, after_seq: int, limit: int
    ) -> builtins.list[Job]:
        with self._lock:
            waiting = [
                job
                for job in self.jobs.values()
                if job.seq > after_seq
                and wants_a_run(job.state, job.scheduled_at, now, job.waiting_for)
                and (
                    job.published_at < published_before
                    if job.published_at is not None
                    else job.updated_at < written_before
                )
            ]
        return sorted(waiting, key=lambda job: job.seq)[:limit]

    def purge_finished(self, finished_before: datetime, limit: int) -> builtins.list[tuple[str, JobState]]:
        with self._lock:
            expired = [
                job
                for job in self.jobs.values()
                if job.state in TERMINAL_STATES
                and job.finished_at is not None
                and job.finished_at < finished_before
            ][:limit]
            ids = {job.job_id for job in expired}
            for job_id in ids:
                del self.jobs[job_id]
                self.log_lines.pop(job_id, None)
            self.events = [event for event in self.events if event.job_id not in ids]
            self._let_go_of_keys(ids)
        return [(job.job_id, job.state) for job in expired]

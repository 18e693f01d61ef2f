"""Recurring schedules kept in SQL, fired by the active scheduler (`taskapp.scheduler`), each firing exactly once.

A firing is a job whose id is derived from the schedule's name and the firing's time (`firing_job_id`), so the
idempotent submit makes it happen once however often it is attempted: by a scheduler that died after the submit
and before it advanced the schedule, by the standby that takes over, or by two schedulers overlapping for a
moment. The schedule is advanced with a compare-and-set on its `next_fire_at`, so its counters (fired, skipped,
missed: the gateway's /metrics reads them from SQL) move once too.

Firing times come from a cron expression in a time zone (cronsim, with cron's daylight-saving rules: a time
that does not exist runs when the clock jumps, a time that occurs twice runs once) or a fixed interval aligned
on the Unix epoch. A firing whose time passed while no scheduler was running (`RunningSince` in
`taskapp.scheduler`), or more than `MISFIRE_GRACE` ago, is missed: `catch_up` LATEST runs the latest missed one once, SKIP none.
A firing whose previous job is unfinished is skipped under `overlap` SKIP, run beside it under ALLOW.
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from taskapp.clock import utcnow
from taskapp.errors import InvalidArgument, JobAlreadyExists, ScheduleNotFound
from taskapp.jobs import SubmitOutcome, SubmitRequest

if TYPE_CHECKING:
    from taskapp.store.port import JobStore

log = logging.getLogger(__name__)

SCHEDULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: The label every firing carries, naming its schedule (ListJobs `labels[schedule]=<name>`).
SCHEDULE_LABEL = "schedule"
#: A firing later than this is missed, not run late: the scheduler was stuck (the database away, say).
MISFIRE_GRACE = timedelta(seconds=60)
#: Firings one pass looks at per schedule at most: a long outage does not make a long pass.
MAX_BACKLOG = 1_000
MAX_INTERVAL = timedelta(days=366)


class Overlap(enum.StrEnum):
    """A firing while the previous firing's job is unfinished: skipped (counted), or run beside it."""

    SKIP = "skip"
    ALLOW = "allow"


class CatchUp(enum.StrEnum):
    """Firings missed while no scheduler ran: the latest runs once, or none does."""

    LATEST = "latest"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """What an operator defines. `job` is the template of each firing's job (no id, run_at or unique key)."""

    name: str
    job: SubmitRequest
    cron: str = ""
    time_zone: str = "UTC"
    interval: timedelta | None = None
    overlap: Overlap = Overlap.SKIP
    catch_up: CatchUp = CatchUp.LATEST
    paused: bool = False

    def timing(self) -> tuple[str, str, float | None]:
        return self.cron, self.time_zone, self.interval.total_seconds() if self.interval else None


@dataclass(frozen=True, slots=True)
class Schedule:
    spec: ScheduleSpec
    next_fire_at: datetime
    created_at: datetime
    updated_at: datetime
    last_fire_at: datetime | None = None
    last_job_id: str = ""
    fired: int = 0
    skipped: int = 0
    missed: int = 0

    @property
    def name(self) -> str:
        return self.spec.name


def next_firing(spec: ScheduleSpec, after: datetime) -> datetime:
    """The first firing time strictly after `after`, in UTC."""
    if spec.interval is not None:
        step = spec.interval.total_seconds()
        return datetime.fromtimestamp((math.floor(after.timestamp() / step) + 1) * step, UTC)
    zone = ZoneInfo(spec.time_zone)
    return next(iter(CronSim(spec.cron, after.astimezone(zone)))).astimezone(UTC)


def firing_job_id(name: str, at: datetime) -> str:
    """The job id of the schedule's firing at `at`: the same for every scheduler that fires it."""
    return f"schedule.{name}.{at.astimezone(UTC):%Y%m%dT%H%M%S}Z"


@dataclass(frozen=True, slots=True)
class Plan:
    """What a pass does with a due schedule."""

    fire: list[datetime]
    missed: int
    next_fire_at: datetime


def plan(schedule: Schedule, now: datetime, running_since: datetime) -> Plan:
    """The firings due by `now`; those before `running_since` (no scheduler ran then) or older than
    `MISFIRE_GRACE` are missed, and `catch_up` says whether the latest of them still runs."""
    spec = schedule.spec
    due: list[datetime] = []
    at = schedule.next_fire_at
    while at <= now and len(due) < MAX_BACKLOG:
        due.append(at)
        at = next_firing(spec, at)
    if at <= now:  # a backlog beyond the bound: the rest is missed too
        at = next_firing(spec, now)
    missed = [t for t in due if t < running_since or now - t > MISFIRE_GRACE]
    on_time = [t for t in due if t not in missed]
    catch_up = [missed[-1]] if missed and spec.catch_up is CatchUp.LATEST else []
    return Plan(fire=catch_up + on_time, missed=len(missed) - len(catch_up), next_fire_at=at)


class ScheduleService:
    """Schedules' use cases (the API's) and their firing (the scheduler's). Jobs are submitted through
    `submit`, the job service's own, so a firing is checked, written and published as any job is."""

    def __init__(
        self,
        store: JobStore,
        submit: Callable[[SubmitRequest], SubmitOutcome],
        validate: Callable[[SubmitRequest], object],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self._submit = submit
        self._validate = validate
        self._clock = clock

    def check(self, spec: ScheduleSpec) -> ScheduleSpec:
        """Every field of a definition; the job template as SubmitJob would check it."""
        if not SCHEDULE_NAME.match(spec.name):
            raise InvalidArgument(
                "name", "must be 1-64 characters of [A-Za-z0-9._-], a letter or digit first"
            )
        if bool(spec.cron) == (spec.interval is not None):
            raise InvalidArgument("cron", "give either a cron expression or an interval")
        if spec.interval is not None:
            seconds = spec.interval.total_seconds()
            if seconds < 1 or seconds != int(seconds) or spec.interval > MAX_INTERVAL:
                raise InvalidArgument("interval", "must be whole seconds, from 1 s to 366 days")
        else:
            try:
                ZoneInfo(spec.time_zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise InvalidArgument("time_zone", f"unknown time zone {spec.time_zone!r}") from None
            try:
                CronSim(spec.cron, datetime.now(UTC))
            except CronSimError as exc:
                raise InvalidArgument("cron", f"not a cron expression: {exc}") from None
        job = spec.job
        if job.job_id is not None or job.run_at is not None or job.unique_key is not None:
            raise InvalidArgument(
                "job", "a schedule's job takes no job_id, run_at or unique key: each firing has its own id"
            )
        try:
            self._validate(dataclasses.replace(job, labels={**(job.labels or {}), SCHEDULE_LABEL: spec.name}))
        except InvalidArgument as exc:
            raise InvalidArgument(f"job.{exc.field}", exc.problem) from None
        return spec

    def put(self, spec: ScheduleSpec, must_exist: bool = False) -> tuple[Schedule, bool, bool]:
        """Create `spec`, or update the schedule of its name to it: (schedule, created, changed). A change of
        timing, or a resume, sets the next firing from now; a pause or a change of the job keeps it."""
        self.check(spec)
        now = self._clock()
        existing = self.store.get_schedule(spec.name)
        if existing is None:
            if must_exist:
                raise ScheduleNotFound(spec.name)
            schedule = Schedule(
                spec=spec, next_fire_at=next_firing(spec, now), created_at=now, updated_at=now
            )
            return self.store.create_schedule(schedule), True, True
        if existing.spec == spec:
            return existing, False, False
        retimed = existing.spec.timing() != spec.timing() or (existing.spec.paused and not spec.paused)
        changed = dataclasses.replace(
            existing,
            spec=spec,
            updated_at=now,
            next_fire_at=next_firing(spec, now) if retimed else existing.next_fire_at,
        )
        return self.store.update_schedule(changed), False, True

    def get(self, name: str) -> Schedule:
        schedule = self.store.get_schedule(name)
        if schedule is None:
            raise ScheduleNotFound(name)
        return schedule

    def list(self) -> builtins.list[Schedule]:
        return self.store.list_schedules()

    def set_paused(self, name: str, paused: bool) -> Schedule:
        return self.put(dataclasses.replace(self.get(name).spec, paused=paused))[0]

    def delete(self, name: str) -> bool:
        return self.store.delete_schedule(name)

    def trigger(self, name: str) -> SubmitOutcome:
        """Fire now, beside the schedule's own firings (which it does not move)."""
        schedule = self.get(name)
        now = self._clock()
        job_id = f"schedule.{name}.manual.{now:%Y%m%dT%H%M%S%f}"
        return self._submit(self._firing(schedule.spec, job_id))

    # Firing (the active scheduler).

    def fire_due(self, running_since: datetime, limit: int = 100) -> int:
        """Fire every schedule that is due; how many jobs that submitted."""
        fired = 0
        for schedule in self.store.due_schedules(self._clock(), limit):
            fired += self._fire(schedule, running_since)
        return fired

    def _fire(self, schedule: Schedule, running_since: datetime) -> int:
        now = self._clock()
        steps = plan(schedule, now, running_since)
        spec = schedule.spec
        last_fire_at, last_job_id = schedule.last_fire_at, schedule.last_job_id
        fired = skipped = 0
        for at in steps.fire:
            if spec.overlap is Overlap.SKIP and last_job_id and self._unfinished(last_job_id):
                skipped += 1
                continue
            job_id = firing_job_id(spec.name, at)
            try:
                self._submit(self._firing(spec, job_id))
            except JobAlreadyExists:
                pass  # fired before from an older definition of the schedule
            except InvalidArgument as exc:  # its job type is gone, say: counted as skipped, said in the log
                log.warning("schedule %s cannot fire: %s", spec.name, exc)
                skipped += 1
                continue
            fired += 1
            last_fire_at, last_job_id = at, job_id
        self.store.advance_schedule(
            dataclasses.replace(
                schedule,
                next_fire_at=steps.next_fire_at,
                last_fire_at=last_fire_at,
                last_job_id=last_job_id,
                fired=schedule.fired + fired,
                skipped=schedule.skipped + skipped,
                missed=schedule.missed + steps.missed,
            ),
            expected_next_fire_at=schedule.next_fire_at,
        )
        return fired

    def _unfinished(self, job_id: str) -> bool:
        job = self.store.get(job_id)
        return job is not None and not job.state.is_terminal

    @staticmethod
    def _firing(spec: ScheduleSpec, job_id: str) -> SubmitRequest:
        labels = {**(spec.job.labels or {}), SCHEDULE_LABEL: spec.name}
        return dataclasses.replace(spec.job, job_id=job_id, labels=labels)

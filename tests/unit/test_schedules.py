"""Schedules on a simulated clock, on in-memory ports: firing times (cron in a time zone across daylight-saving
changes, intervals), exactly one job per firing however often it is attempted, overlap and catch-up rules,
pause, resume, update and delete."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from taskapp.errors import InvalidArgument, ScheduleNotFound
from taskapp.jobs import JobState, SubmitRequest
from taskapp.registry import load_handlers
from taskapp.schedules import (
    CatchUp,
    Overlap,
    ScheduleService,
    ScheduleSpec,
    firing_job_id,
    next_firing,
)
from taskapp.service import JobService
from taskapp.store.memory import InMemoryJobStore
from taskapp.testing import InMemoryPublisher

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def store() -> InMemoryJobStore:
    return InMemoryJobStore()


@pytest.fixture
def schedules(store: InMemoryJobStore, clock: Clock) -> ScheduleService:
    jobs = JobService(store, InMemoryPublisher(), load_handlers(), clock=clock)
    return ScheduleService(store, jobs.submit, jobs.validate, clock=clock)


def every(seconds: int, name: str = "tick", **fields: object) -> ScheduleSpec:
    return ScheduleSpec(
        name=name,
        job=SubmitRequest(type="noop"),
        interval=timedelta(seconds=seconds),
        **fields,  # type: ignore[arg-type]
    )


def firings(store: InMemoryJobStore, name: str = "tick") -> list[str]:
    return sorted(job_id for job_id, job in store.jobs.items() if job.labels.get("schedule") == name)


def cron_times(expression: str, start: datetime, count: int) -> list[str]:
    spec = ScheduleSpec(name="c", job=SubmitRequest(type="noop"), cron=expression, time_zone="Europe/Berlin")
    times, at = [], start
    for _ in range(count):
        at = next_firing(spec, at)
        times.append(at.astimezone(BERLIN).isoformat())
    return times


def test_a_daily_cron_in_berlin_keeps_its_wall_clock_time_across_both_daylight_saving_changes() -> None:
    # 29 March 2026: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist; it runs as the clock jumps.
    assert cron_times("30 2 * * *", datetime(2026, 3, 27, 12, tzinfo=BERLIN), 4) == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    # 25 October 2026: 03:00 CEST falls back to 02:00 CET, so 02:30 comes twice; it runs once.
    assert cron_times("30 2 * * *", datetime(2026, 10, 23, 12, tzinfo=BERLIN), 4) == [
        "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]
    assert cron_times("0 9 * * 1-5", datetime(2026, 3, 27, 12, tzinfo=BERLIN), 2) == [
        "2026-03-30T09:00:00+02:00",  # Monday, the first working day of summer time
        "2026-03-31T09:00:00+02:00",
    ]


def test_firing_across_the_autumn_change_on_a_simulated_clock_fires_each_time_once(
    store: InMemoryJobStore, schedules: ScheduleService, clock: Clock
) -> None:
    clock.now = datetime(2026, 10, 24, 12, tzinfo=UTC)
    spec = ScheduleSpec(
        name="nightly",
        job=SubmitRequest(type="noop"),
        cron="30 2 * * *",
        time_zone="Europe/Berlin",
        overlap=Overlap.ALLOW,  # no worker finishes these jobs
    )
    schedules.put(spec)
    running_since = clock.now
    for _ in range(3 * 24 * 60):  # three days, a pass a minute
        clock.advance(60)
        schedules.fire_due(running_since)
    fired = [
        store.jobs[job_id].created_at.astimezone(BERLIN).strftime("%m-%d %H:%M")
        for job_id in firings(store, "nightly")
    ]
    # The 25th's 02:30 comes twice (the clocks go back at 03:00): it fires at the first only.
    assert fired == ["10-25 02:30", "10-26 02:30", "10-27 02:30"]
    assert firings(store, "nightly")[0] == firing_job_id("nightly", datetime(2026, 10, 25, 0, 30, tzinfo=UTC))


def test_an_interval_fires_on_its_multiples_each_once_however_often_a_pass_runs(
    store: InMemoryJobStore, schedules: ScheduleService, clock: Clock
) -> None:
    schedules.put(every(2, overlap=Overlap.ALLOW))
    for _ in range(80):  # 20 s in passes of 0.25 s, each pass twice (two schedulers)
        clock.advance(0.25)
        schedules.fire_due(T0)
        schedules.fire_due(T0)
    assert firings(store) == [firing_job_id("tick", T0 + timedelta(seconds=2 * n)) for n in range(1, 11)]
    assert schedules.get("tick").fired == 10


def test_a_scheduler_that_died_after_its_submit_is_finished_by_the_next_without_a_second_job(
    store: InMemoryJobStore, schedules: ScheduleService, clock: Clock
) -> None:
    schedules.put(every(2))
    clock.advance(2)
    before = schedules.get("tick")
    schedules._fire(before, T0)  # fired and advanced...
    store.schedules["tick"] = before  # ...as if the advance had been lost with its scheduler
    schedules.fire_due(T0)
    assert firings(store) == [firing_job_id("tick", T0 + timedelta(seconds=2))]
    assert schedules.get("tick").next_fire_at == T0 + timedelta(seconds=4)


def test_overlap_skip_counts_the_firings_during_a_run_and_allow_runs_them(
    store: InMemoryJobStore, schedules: ScheduleService, clock: Clock
) -> None:
    schedules.put(every(2, name="skip", overlap=Overlap.SKIP))
    schedules.put(every(2, name="allow", overlap=Overlap.ALLOW))
    for _ in range(5):  # 10 s; no worker finishes the jobs
        clock.advance(2)
        schedules.fire_due(T0)
    assert len(firings(store, "skip")) == 1 and schedules.get("skip").skipped == 4
    assert len(firings(store, "allow")) == 5 and schedules.get("allow").skipped == 0
    (running,) = firings(store, "skip")
    store.jobs[running] = dataclasses.replace(store.jobs[running], state=JobState.SUCCEEDED)
    clock.advance(2)
    schedules.fire_due(T0)
    assert len(firings(store, "skip")) == 2


@pytest.mark.parametrize(("catch_up", "caught_up"), [(CatchUp.LATEST, 1), (CatchUp.SKIP, 0)])
def test_firings_missed_while_no_scheduler_ran_are_caught_up_once_or_skipped(
    store: InMemoryJobStore, schedules: ScheduleService, clock: Clock, catch_up: CatchUp, caught_up: int
) -> None:
    schedules.put(every(2, catch_up=catch_up, overlap=Overlap.ALLOW))
    clock.advance(10.5)  # five firings while nothing ran
    restarted = clock.now
    schedules.fire_due(restarted)
    assert len(firings(store)) == caught_up
    if caught_up:
        assert firings(store) == [firing_job_id("tick", T0 + timedelta(seconds=10))]
    assert schedules.get("tick").missed == 5 - caught_up
    clock.advance(2)
    schedules.fire_due(restarted)
    assert len(firings(store)) == caught_up + 1  # on time again


def test_firings_late_after_a_failover_all_run(
    store: InMemoryJobStore, schedules: ScheduleService, clock: Clock
) -> None:
    """A standby that took over 4 s late was running all along: the firings it finds due are late, not missed."""
    schedules.put(every(2, overlap=Overlap.ALLOW))
    clock.advance(4.5)
    schedules.fire_due(T0)
    assert len(firings(store)) == 2 and schedules.get("tick").missed == 0


def test_pause_resume_update_and_delete_take_effect_by_the_next_firing(
    store: InMemoryJobStore, schedules: ScheduleService, clock: Clock
) -> None:
    schedules.put(every(2, overlap=Overlap.ALLOW))
    schedules.set_paused("tick", True)
    clock.advance(6)
    schedules.fire_due(T0)
    assert firings(store) == []
    schedules.set_paused("tick", False)  # the firings while paused are not caught up
    assert schedules.get("tick").next_fire_at == T0 + timedelta(seconds=8)
    clock.advance(2)
    schedules.fire_due(T0)
    assert len(firings(store)) == 1

    _, created, changed = schedules.put(every(5, overlap=Overlap.ALLOW))
    assert (created, changed) == (False, True)
    assert schedules.get("tick").next_fire_at == T0 + timedelta(seconds=10)
    assert schedules.put(every(5, overlap=Overlap.ALLOW))[1:] == (False, False)  # the same again: no change
    clock.advance(2)
    schedules.fire_due(T0)
    assert firings(store)[-1] == firing_job_id("tick", T0 + timedelta(seconds=10))
    assert schedules.delete("tick") and not schedules.delete("tick")
    clock.advance(5)
    assert schedules.fire_due(T0) == 0
    with pytest.raises(ScheduleNotFound):
        schedules.get("tick")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "has space"}, "name"),
        ({"interval": None}, "cron"),
        ({"cron": "* * * * *"}, "cron"),
        ({"interval": timedelta(seconds=1.5)}, "interval"),
        ({"interval": timedelta(0)}, "interval"),
        ({"interval": None, "cron": "61 * * * *"}, "cron"),
        ({"interval": None, "cron": "0 9 * * *", "time_zone": "Mars/Olympus"}, "time_zone"),
        ({"job": SubmitRequest(type="nope")}, "job.type"),
        ({"job": SubmitRequest(type="sleep", payload={})}, "job.payload.seconds"),
        ({"job": SubmitRequest(type="noop", job_id="fixed")}, "job"),
    ],
)
def test_a_bad_definition_names_its_field(
    schedules: ScheduleService, change: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        schedules.put(dataclasses.replace(every(2), **change))  # type: ignore[arg-type]
    assert refused.value.field == field

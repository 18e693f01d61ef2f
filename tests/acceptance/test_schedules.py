"""Recurring schedules with the real gateway, workers and schedulers: firings on time and each exactly once
(the job ids, derived from the firing times, and an execution record outside taskapp's SQL prove it), across
kill -9 of the active scheduler, with overlap and catch-up rules, and managed with the `taskapp` command."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from grpc_gateway.v1 import jobs_pb2
from taskapp.schedules import firing_job_id
from tests.helpers import ExecutionRecord, Stack, metric_total, taskapp, wait_for

MakeStack = Callable[..., Stack]
#: "schedule.<name>.<YYYYmmddTHHMMSS>Z": the firing time in a job id.
FIRING = re.compile(r"^schedule\.(?P<name>[^.]+)\.(?P<at>\d{8}T\d{6})Z$")


def firings(stack: Stack, name: str) -> dict[datetime, jobs_pb2.Job]:
    """The schedule's jobs by firing time, read from their ids."""
    jobs: dict[datetime, jobs_pb2.Job] = {}
    request = jobs_pb2.ListJobsRequest(page_size=1000, labels={"schedule": name})
    for job in stack.stub().ListJobs(request, timeout=10).jobs:
        match = FIRING.match(job.job_id)
        if match:  # a manual trigger's id says "manual" instead
            jobs[datetime.strptime(match["at"], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)] = job
    return jobs


def schedule(stack: Stack, name: str) -> jobs_pb2.Schedule:
    return stack.stub().GetSchedule(jobs_pb2.GetScheduleRequest(name=name), timeout=10)


def every(seconds: int, name: str, job: jobs_pb2.SubmitJobRequest, **fields: object) -> jobs_pb2.Schedule:
    definition = jobs_pb2.Schedule(name=name, job=job, **fields)  # type: ignore[arg-type]
    definition.interval.FromSeconds(seconds)
    return definition


def create(stack: Stack, definition: jobs_pb2.Schedule) -> jobs_pb2.PutScheduleResponse:
    return stack.stub().CreateSchedule(jobs_pb2.CreateScheduleRequest(schedule=definition), timeout=10)


def created_at(job: jobs_pb2.Job) -> datetime:
    return job.created_at.ToDatetime(tzinfo=UTC)


def test_a_schedule_every_2_s_fires_10_times_in_20_s_each_once_and_on_time(make_stack: MakeStack) -> None:
    stack = make_stack()
    out = taskapp(
        stack, "schedules", "create", "tick", "--type", "noop", "--every", "2", "--overlap", "allow"
    )
    assert out.strip() == "schedule tick: created"
    started = datetime.now(UTC)
    wait_for(lambda: len(firings(stack, "tick")) >= 11, 30, "11 firings")
    window = sorted(at for at in firings(stack, "tick") if started < at <= started + timedelta(seconds=20))
    assert len(window) == 10  # every even second of the 20
    assert all((b - a) == timedelta(seconds=2) for a, b in pairwise(window))
    jobs = firings(stack, "tick")
    for at in window:
        job = jobs[at]
        assert job.job_id == firing_job_id("tick", at)
        assert timedelta(0) <= created_at(job) - at <= timedelta(seconds=1), "a firing starts within 1 s"
    # The schedule's counter moves just after its firing's job is written: the eleventh may be on its way.
    wait_for(lambda: schedule(stack, "tick").fired >= 11, 5, "the counter of 11 firings")
    metrics = stack.env["TASKAPP_METRICS_ADDR"]
    assert metric_total(metrics, "taskapp_schedule_firings_total", schedule="tick") >= 11
    assert "tick" in taskapp(stack, "schedules", "list")


def active_scheduler(stack: Stack, names: list[str]) -> str | None:
    """The scheduler whose log says last that it is active."""
    for name in names:
        said = re.findall(r"is (active|standing by)", stack.log(name))
        if said and said[-1] == "active" and name in stack.processes:
            return name
    return None


def test_the_active_scheduler_killed_mid_firing_5_times_loses_and_doubles_no_firing(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = make_stack(scheduler=False)
    names = ["scheduler-a", "scheduler-b"]
    for name in names:
        stack.start_scheduler(name)
    record = ExecutionRecord(tmp_path / "record")
    job = jobs_pb2.SubmitJobRequest(type="recorded")
    job.payload.update(record.payload())
    create(stack, every(2, "ticker", job, overlap=jobs_pb2.OVERLAP_ALLOW))
    first = datetime.now(UTC)
    for kill in range(5):
        active = wait_for(lambda: active_scheduler(stack, names), 15, "a scheduler to be active")
        # The middle of a firing window: just after an even second, as the active one fires.
        time.sleep(2 - time.time() % 2 + 0.05)
        stack.kill(active)
        # It comes back as the standby, with a log of its own (start_scheduler waits for its first line).
        (stack.workdir / f"{active}.log").rename(stack.workdir / f"{active}-{kill}.log")
        stack.start_scheduler(active)
    last = datetime.now(UTC) - timedelta(seconds=6)  # firings up to here have had time to be fired by now
    wait_for(
        lambda: all(at in firings(stack, "ticker") for at in _even_seconds(first, last)), 30, "every firing"
    )

    expected = _even_seconds(first, last)
    jobs = firings(stack, "ticker")
    assert set(expected) <= set(jobs), "no firing lost"
    wait_for(lambda: all(record.finished().get(jobs[at].job_id) for at in expected), 30, "their runs")
    started = [run.job_id for run in record.runs() if run.job_id in {jobs[at].job_id for at in expected}]
    assert len(started) == len(set(started)) == len(expected), "each firing's job ran once"


def _even_seconds(after: datetime, until: datetime) -> list[datetime]:
    """The firing times of an every-2-s schedule in (after, until]."""
    at = datetime.fromtimestamp((math.floor(after.timestamp() / 2) + 1) * 2, UTC)
    times = []
    while at <= until:
        times.append(at)
        at += timedelta(seconds=2)
    return times


def test_overlap_skip_skips_firings_during_a_run_and_allow_overlaps(make_stack: MakeStack) -> None:
    stack = make_stack(concurrency=4)
    sleeper = jobs_pb2.SubmitJobRequest(type="sleep")
    sleeper.payload.update({"seconds": 5})
    create(stack, every(2, "skipper", sleeper, overlap=jobs_pb2.OVERLAP_SKIP))
    create(stack, every(2, "allower", sleeper, overlap=jobs_pb2.OVERLAP_ALLOW))

    def spans(name: str) -> list[tuple[datetime, datetime]]:
        jobs = sorted(firings(stack, name).values(), key=lambda job: job.job_id)
        return [
            (job.started_at.ToDatetime(tzinfo=UTC), job.finished_at.ToDatetime(tzinfo=UTC))
            for job in jobs
            if job.state == jobs_pb2.JOB_STATE_SUCCEEDED
        ]

    wait_for(
        lambda: (
            len(spans("skipper")) >= 2
            and len(spans("allower")) >= 3
            and schedule(stack, "skipper").skipped >= 4
        ),
        40,
        "two skipper runs, three allower runs and four skipped firings",
    )
    skipped = spans("skipper")
    assert all(later[0] >= earlier[1] for earlier, later in pairwise(skipped))
    allowed = spans("allower")
    assert any(later[0] < earlier[1] for earlier, later in pairwise(allowed)), "overlaps"
    assert schedule(stack, "allower").skipped == 0
    assert (
        metric_total(
            stack.env["TASKAPP_METRICS_ADDR"], "taskapp_schedule_skipped_firings_total", schedule="skipper"
        )
        >= 4
    )


def test_firings_missed_while_everything_was_stopped_run_once_or_not_at_all(make_stack: MakeStack) -> None:
    stack = make_stack()
    noop = jobs_pb2.SubmitJobRequest(type="noop")
    create(stack, every(2, "latest", noop, overlap=jobs_pb2.OVERLAP_ALLOW, catch_up=jobs_pb2.CATCH_UP_LATEST))
    create(stack, every(2, "skip", noop, overlap=jobs_pb2.OVERLAP_ALLOW, catch_up=jobs_pb2.CATCH_UP_SKIP))
    wait_for(lambda: len(firings(stack, "skip")) >= 2, 15, "two firings")
    stack.stop_all()
    stopped = datetime.now(UTC)
    time.sleep(10)  # everything stopped, over five firings
    stack.start_gateway()
    stack.start_worker()
    stack.start_scheduler()
    # The restarted scheduler says from when it runs as it takes the lease (its log follows the first one's).
    wait_for(lambda: len(re.findall("firings due before", stack.log("scheduler"))) == 2, 30, "the restart")
    running_since = datetime.fromisoformat(
        re.findall(r"firings due before (\S+) are missed", stack.log("scheduler"))[-1]
    )
    assert running_since > stopped + timedelta(seconds=10), "no scheduler ran while everything was stopped"
    wait_for(
        lambda: all(
            schedule(stack, name).next_fire_at.ToDatetime(tzinfo=UTC) > running_since
            for name in ("latest", "skip")
        ),
        15,
        "a pass over both schedules",
    )

    for name, caught_up in (("latest", 1), ("skip", 0)):
        jobs = firings(stack, name)
        before_stop = max(at for at in jobs if at <= stopped)
        missed = _even_seconds(before_stop, running_since - timedelta(microseconds=1))
        fired_in_gap = [at for at in missed if at in jobs]
        assert len(missed) >= 5
        assert fired_in_gap == missed[-1:] if caught_up else fired_in_gap == [], (name, fired_in_gap)
        assert schedule(stack, name).missed == len(missed) - caught_up
        metrics = stack.env["TASKAPP_METRICS_ADDR"]
        assert (
            metric_total(metrics, "taskapp_schedule_missed_firings_total", schedule=name)
            == len(missed) - caught_up
        )


def test_pause_resume_update_delete_and_apply_through_the_taskapp_command(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = make_stack()
    taskapp(stack, "schedules", "create", "beat", "--type", "noop", "--every", "2", "--overlap", "allow")
    wait_for(lambda: firings(stack, "beat"), 10, "a firing")
    assert taskapp(stack, "schedules", "pause", "beat").strip() == "schedule beat: paused"
    paused_at = datetime.now(UTC)
    time.sleep(5)
    assert not [at for at in firings(stack, "beat") if at > paused_at + timedelta(seconds=0.5)]
    taskapp(stack, "schedules", "resume", "beat")
    resumed = datetime.now(UTC)
    wait_for(lambda: [at for at in firings(stack, "beat") if at > resumed], 4, "a firing after resume")

    taskapp(stack, "schedules", "update", "beat", "--type", "noop", "--every", "3", "--overlap", "allow")
    updated = datetime.now(UTC)
    wait_for(lambda: [at for at in firings(stack, "beat") if at > updated], 5, "a firing after the update")
    assert all(at.timestamp() % 3 == 0 for at in firings(stack, "beat") if at > updated)

    assert taskapp(stack, "schedules", "delete", "beat").strip() == "schedule beat: deleted"
    deleted = datetime.now(UTC)
    time.sleep(4)
    assert not [at for at in firings(stack, "beat") if at > deleted + timedelta(seconds=0.5)]

    taskapp(stack, "schedules", "create", "old", "--type", "noop", "--every", "3600")
    schedules_file = tmp_path / "schedules.toml"
    schedules_file.write_text(
        """
[schedules.nightly-report]
cron = "30 2 * * *"
time_zone = "Europe/Berlin"
catch_up = "skip"
[schedules.nightly-report.job]
type = "echo"
payload = {report = "daily"}
priority = "high"
labels = {team = "ml"}

[schedules.hourly]
every = 3600
job = {type = "noop"}
"""
    )
    first = taskapp(stack, "schedules", "apply", str(schedules_file))
    assert sorted(first.splitlines()) == ["hourly: created", "nightly-report: created", "old: deleted"]
    stamps = {
        s.name: s.updated_at.ToDatetime()
        for s in stack.stub().ListSchedules(jobs_pb2.ListSchedulesRequest(), timeout=10).schedules
    }
    again = taskapp(stack, "schedules", "apply", str(schedules_file))
    assert sorted(again.splitlines()) == ["hourly: unchanged", "nightly-report: unchanged"]
    after = {
        s.name: s.updated_at.ToDatetime()
        for s in stack.stub().ListSchedules(jobs_pb2.ListSchedulesRequest(), timeout=10).schedules
    }
    assert after == stamps
    nightly = schedule(stack, "nightly-report")
    assert (nightly.cron, nightly.time_zone, nightly.job.priority) == (
        "30 2 * * *",
        "Europe/Berlin",
        jobs_pb2.PRIORITY_HIGH,
    )
    assert nightly.next_fire_at.ToDatetime(tzinfo=UTC).astimezone().strftime("%M") == "30"


@pytest.mark.parametrize(
    "bad",
    [
        '{"name": "x y", "cron": "* * * * *", "job": {"type": "noop"}}',
        '{"name": "x", "cron": "nope", "job": {"type": "noop"}}',
    ],
)
def test_a_bad_schedule_is_invalid_argument_through_grpcurl(make_stack: MakeStack, bad: str) -> None:
    stack = make_stack(worker=False, scheduler=False)
    answer = stack.grpcurl(
        "-d", f'{{"schedule": {bad}}}', stack.address, "taskapp.v1.JobService/CreateSchedule", check=False
    )
    assert answer.returncode != 0 and "InvalidArgument" in answer.stderr

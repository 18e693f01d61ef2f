"""`taskapp schedules ...`: the schedule verbs of the API, and `apply FILE` to make the schedules match a TOML
file (create, update, delete), which changes nothing when they already do."""

from __future__ import annotations

import json
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from grpc_gateway.cli import CliConfig, console_out, echo_json, pass_cli_config, when
from grpc_gateway.client import CatchUp, Overlap, Schedule, ScheduleSpec
from taskapp.jobs import Priority, SubmitRequest

#: The keys of a schedule's table in a schedules file, and of its `job` table.
SCHEDULE_KEYS = {"cron", "time_zone", "every", "overlap", "catch_up", "paused", "job"}
JOB_KEYS = {"type", "payload", "priority", "max_attempts", "timeout_seconds", "labels"}


def spec_from_table(name: str, table: dict[str, Any]) -> ScheduleSpec:
    """A schedule of a schedules file; `ValueError` names what is wrong."""
    unknown = set(table) - SCHEDULE_KEYS
    if unknown:
        raise ValueError(f"schedule {name!r}: unknown key(s) {', '.join(sorted(unknown))}")
    job = table.get("job")
    if not isinstance(job, dict) or "type" not in job:
        raise ValueError(f"schedule {name!r}: needs a [schedules.{name}.job] table with a type")
    if set(job) - JOB_KEYS:
        raise ValueError(f"schedule {name!r}: unknown job key(s) {', '.join(sorted(set(job) - JOB_KEYS))}")
    return ScheduleSpec(
        name=name,
        job=SubmitRequest(
            type=job["type"],
            payload=job.get("payload"),
            priority=Priority(job["priority"]) if "priority" in job else None,
            max_attempts=job.get("max_attempts"),
            timeout_seconds=job.get("timeout_seconds"),
            labels=job.get("labels"),
        ),
        cron=table.get("cron", ""),
        time_zone=table.get("time_zone", "UTC"),
        interval=timedelta(seconds=table["every"]) if "every" in table else None,
        overlap=Overlap(table.get("overlap", "skip")),
        catch_up=CatchUp(table.get("catch_up", "latest")),
        paused=bool(table.get("paused", False)),
    )


def _describe(schedule: Schedule) -> dict[str, Any]:
    spec = schedule.spec
    return {
        "name": spec.name,
        "when": f"every {spec.interval.total_seconds():g} s"
        if spec.interval
        else f"{spec.cron} ({spec.time_zone})",
        "job": spec.job.type,
        "paused": spec.paused,
        "next": when(schedule.next_fire_at) if not spec.paused else "",
        "last": when(schedule.last_fire_at),
        "fired": schedule.fired,
        "skipped": schedule.skipped,
        "missed": schedule.missed,
    }


def _print(config: CliConfig, schedules: list[Schedule]) -> None:
    if config.as_json:
        for schedule in schedules:
            echo_json(_describe(schedule))
        return
    table = Table("NAME", "WHEN", "JOB", "PAUSED", "NEXT", "LAST", "FIRED", "SKIPPED", "MISSED")
    for schedule in schedules:
        table.add_row(*(str(value) for value in _describe(schedule).values()))
    console_out().print(table)


@click.group()
def schedules() -> None:
    """Recurring schedules: each firing is a job named after the schedule and the firing's time."""


def _definition_options(command: Any) -> Any:
    options = [
        click.argument("name"),
        click.option("--type", "job_type", required=True, help="The job type each firing submits."),
        click.option("--payload", default=None, metavar="JSON", help="The job's payload."),
        click.option("--cron", default="", metavar="EXPR", help='A cron expression, e.g. "30 2 * * *".'),
        click.option("--time-zone", default="UTC", metavar="ZONE", help="The cron's time zone (IANA)."),
        click.option(
            "--every", type=click.IntRange(min=1), metavar="SECONDS", help="A fixed interval instead."
        ),
        click.option("--priority", type=click.Choice([p.value for p in Priority]), default=None),
        click.option("--overlap", type=click.Choice([o.value for o in Overlap]), default="skip"),
        click.option("--catch-up", type=click.Choice([c.value for c in CatchUp]), default="latest"),
        click.option("--paused", is_flag=True, help="Create it paused."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _spec(name: str, **options: Any) -> ScheduleSpec:
    table: dict[str, Any] = {
        "job": {"type": options["job_type"]},
        "cron": options["cron"],
        "time_zone": options["time_zone"],
        "overlap": options["overlap"],
        "catch_up": options["catch_up"],
        "paused": options["paused"],
    }
    if options["payload"] is not None:
        table["job"]["payload"] = json.loads(options["payload"])
    if options["priority"] is not None:
        table["job"]["priority"] = options["priority"]
    if options["every"] is not None:
        table["every"] = options["every"]
    return spec_from_table(name, table)


@schedules.command("create")
@_definition_options
@pass_cli_config
def create(config: CliConfig, name: str, **options: Any) -> None:
    """Create schedule NAME, or update it to this definition."""
    _put(config, _spec(name, **options), must_exist=False)


@schedules.command("update")
@_definition_options
@pass_cli_config
def update(config: CliConfig, name: str, **options: Any) -> None:
    """Change schedule NAME to this definition (it must exist)."""
    _put(config, _spec(name, **options), must_exist=True)


def _put(config: CliConfig, spec: ScheduleSpec, must_exist: bool) -> None:
    with config.connect() as client:
        put = client.put_schedule(spec, must_exist=must_exist)
    click.echo(f"schedule {spec.name}: {_outcome(put.created, put.changed)}")


def _outcome(created: bool, changed: bool) -> str:
    return "created" if created else "updated" if changed else "unchanged"


@schedules.command("list")
@pass_cli_config
def list_(config: CliConfig) -> None:
    """Every schedule, with its next and last firing and what its firings did."""
    with config.connect() as client:
        _print(config, client.list_schedules())


@schedules.command("get")
@click.argument("name")
@pass_cli_config
def get(config: CliConfig, name: str) -> None:
    """One schedule."""
    with config.connect() as client:
        _print(config, [client.get_schedule(name)])


@schedules.command("pause")
@click.argument("name")
@pass_cli_config
def pause(config: CliConfig, name: str) -> None:
    """No firing until resumed."""
    with config.connect() as client:
        client.pause_schedule(name)
    click.echo(f"schedule {name}: paused")


@schedules.command("resume")
@click.argument("name")
@pass_cli_config
def resume(config: CliConfig, name: str) -> None:
    """Fire again, from the next firing time on (the ones while paused are not caught up)."""
    with config.connect() as client:
        schedule = client.resume_schedule(name)
    click.echo(f"schedule {name}: resumed, next firing {when(schedule.next_fire_at)}")


@schedules.command("delete")
@click.argument("name")
@pass_cli_config
def delete(config: CliConfig, name: str) -> None:
    """Delete schedule NAME (its jobs stay)."""
    with config.connect() as client:
        deleted = client.delete_schedule(name)
    click.echo(f"schedule {name}: {'deleted' if deleted else 'not found'}")


@schedules.command("trigger")
@click.argument("name")
@pass_cli_config
def trigger(config: CliConfig, name: str) -> None:
    """Fire now; print the job's id."""
    with config.connect() as client:
        click.echo(client.trigger_schedule(name).job_id)


@schedules.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_cli_config
def apply(config: CliConfig, file: Path) -> None:
    """Make the schedules match FILE (TOML, one [schedules.NAME] table each): create, update, delete.

    Applying the same file again changes nothing."""
    try:
        tables = tomllib.loads(file.read_text()).get("schedules", {})
        wanted = [spec_from_table(name, table) for name, table in tables.items()]
    except (tomllib.TOMLDecodeError, ValueError, KeyError, TypeError) as exc:
        raise click.BadParameter(str(exc), param_hint="FILE") from None
    with config.connect() as client:
        for spec in wanted:
            put = client.put_schedule(spec)
            click.echo(f"{spec.name}: {_outcome(put.created, put.changed)}")
        for schedule in client.list_schedules():
            if schedule.name not in tables:
                client.delete_schedule(schedule.name)
                click.echo(f"{schedule.name}: deleted")

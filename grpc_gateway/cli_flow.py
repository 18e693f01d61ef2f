"""`taskapp explain ID` (why a job is not running), `taskapp limits ...` (a job type's limit) and `taskapp pause`
/ `taskapp resume` (a job type or a priority queue)."""

from __future__ import annotations

import click
from rich.table import Table

from grpc_gateway.cli import CliConfig, console_out, echo_json, pass_cli_config
from grpc_gateway.client import JobClient
from taskapp.jobs import FlowControl, Priority

_TARGETS = click.Choice(["type", "queue"])


@click.command()
@click.argument("job_id", metavar="ID")
@pass_cli_config
def explain(config: CliConfig, job_id: str) -> None:
    """Say why job ID is not running, or what it is doing: its code, then the reason in words."""
    with config.connect() as client:
        explained = client.explain(job_id)
    if config.as_json:
        echo_json(explained)
        return
    click.echo(f"{explained.job_id}: {explained.state} ({explained.code})")
    click.echo(explained.reason)


def _said(config: CliConfig, control: FlowControl) -> None:
    if config.as_json:
        echo_json(control)
        return
    said = [f"at most {control.max_running} running"] if control.max_running is not None else []
    if control.rate is not None:
        said.append(f"{control.rate} starts per {control.rate_seconds:g} s")
    click.echo(f"{_name(control)}: {', '.join(said) or 'no limit'}{', paused' if control.paused else ''}")


def _name(control: FlowControl) -> str:
    if control.type is not None:
        return control.type
    return f"queue {control.queue}" if control.queue is not None else f"key {control.key}"


@click.group()
def limits() -> None:
    """How many jobs of a type run at once, across every worker."""


@limits.command("set")
@click.argument("type")
@click.option("--max-running", type=click.IntRange(min=1), metavar="N", help="Jobs running at once.")
@click.option(
    "--rate", type=click.IntRange(min=1), metavar="N", help="Starts per --per seconds, evenly spaced."
)
@click.option("--per", type=click.FloatRange(min=0.001), default=1.0, show_default=True, metavar="SECONDS")
@pass_cli_config
def set_limit(config: CliConfig, type: str, max_running: int | None, rate: int | None, per: float) -> None:
    """Run at most N jobs of TYPE at once, or start at most N per --per seconds (replacing both); the others
    wait, their concurrency keys taking turns."""
    if max_running is None and rate is None:
        raise click.UsageError("give --max-running, --rate or both (`taskapp limits remove` takes them away)")
    with config.connect() as client:
        _said(config, client.set_type_limit(type, max_running, rate, per))


@limits.command("set-key-rate")
@click.argument("key")
@click.option(
    "--rate", type=click.IntRange(min=1), metavar="N", help="Starts per --per seconds; none removes it."
)
@click.option("--per", type=click.FloatRange(min=0.001), default=1.0, show_default=True, metavar="SECONDS")
@pass_cli_config
def set_key_rate(config: CliConfig, key: str, rate: int | None, per: float) -> None:
    """Start at most N jobs with concurrency key KEY per --per seconds, whatever their type."""
    with config.connect() as client:
        _said(config, client.set_key_rate(key, rate, per))


@limits.command("remove")
@click.argument("type")
@pass_cli_config
def remove_limit(config: CliConfig, type: str) -> None:
    """Take away TYPE's limit: its waiting jobs start."""
    with config.connect() as client:
        _said(config, client.set_type_limit(type, None))


@limits.command("list")
@pass_cli_config
def list_limits(config: CliConfig) -> None:
    """Every job type, queue and key with a limit, a rate or a pause."""
    with config.connect() as client:
        controls = client.flow_controls()
    if config.as_json:
        echo_json(controls)
        return
    table = Table("TYPE, QUEUE OR KEY", "MAX RUNNING", "RATE", "PAUSED")
    for control in controls:
        name = _name(control)
        limit = str(control.max_running) if control.max_running is not None else "-"
        rate = f"{control.rate}/{control.rate_seconds:g}s" if control.rate is not None else "-"
        table.add_row(name, limit, rate, "yes" if control.paused else "no")
    console_out().print(table)


def _pause(client: JobClient, target: str, name: str, paused: bool) -> FlowControl:
    if target == "type":
        return client.pause_type(name) if paused else client.resume_type(name)
    try:
        queue = Priority(name)
    except ValueError:
        raise click.BadParameter(f"not a queue: {name!r} (one of {', '.join(Priority)})") from None
    return client.pause_queue(queue) if paused else client.resume_queue(queue)


@click.command()
@click.argument("target", type=_TARGETS)
@click.argument("name")
@pass_cli_config
def pause(config: CliConfig, target: str, name: str) -> None:
    """Start no job of job type or queue NAME until resumed; running ones finish."""
    with config.connect() as client:
        _said(config, _pause(client, target, name, True))


@click.command()
@click.argument("target", type=_TARGETS)
@click.argument("name")
@pass_cli_config
def resume(config: CliConfig, target: str, name: str) -> None:
    """Let the waiting jobs of job type or queue NAME start."""
    with config.connect() as client:
        _said(config, _pause(client, target, name, False))

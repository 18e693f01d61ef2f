"""`taskapp explain ID` (why a job is not running) and `taskapp limits ...` (a job type's limits)."""

from __future__ import annotations

import click
from rich.table import Table

from grpc_gateway.cli import CliConfig, console_out, echo_json, pass_cli_config


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


@click.group()
def limits() -> None:
    """How many jobs of a type run at once, across every worker."""


@limits.command("set")
@click.argument("type")
@click.option("--max-running", type=click.IntRange(min=1), required=True, metavar="N", help="Jobs at once.")
@pass_cli_config
def set_limit(config: CliConfig, type: str, max_running: int) -> None:
    """Run at most N jobs of TYPE at once; the others wait, their concurrency keys taking turns."""
    with config.connect() as client:
        limit = client.set_type_limit(type, max_running)
    if config.as_json:
        echo_json(limit)
    else:
        click.echo(f"{limit.type}: at most {limit.max_running} running")


@limits.command("remove")
@click.argument("type")
@pass_cli_config
def remove_limit(config: CliConfig, type: str) -> None:
    """Take away TYPE's limit: its waiting jobs start."""
    with config.connect() as client:
        limit = client.set_type_limit(type, None)
    if config.as_json:
        echo_json(limit)
    else:
        click.echo(f"{limit.type}: no limit")


@limits.command("list")
@pass_cli_config
def list_limits(config: CliConfig) -> None:
    """Every job type that has a limit."""
    with config.connect() as client:
        type_limits = client.type_limits()
    if config.as_json:
        echo_json(type_limits)
        return
    table = Table("TYPE", "MAX RUNNING")
    for limit in type_limits:
        table.add_row(limit.type, str(limit.max_running))
    console_out().print(table)

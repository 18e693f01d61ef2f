"""The `taskapp` command: taskapp's operations commands plus the job commands, which talk to a gateway.

It is put together here rather than in `taskapp/cli.py` because the job commands need grpc, which the domain
package never imports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from grpc_gateway.client import DEFAULT_ADDRESS, JobClient, JobServiceError, channel_target
from taskapp import cli as taskapp_cli
from taskapp.jobs import Job, JobEvent, JobFilter, JobState, Priority

#: The gateway answered an error, or could not be reached.
EXIT_ERROR = 1
#: `watch` and `submit --watch`: the job ended FAILED, DEAD_LETTER or CANCELLED.
EXIT_JOB_UNSUCCESSFUL = 3

#: Fields of taskapp's dataclasses that only the server knows (a client reads 0, "" or None): not shown.
_SERVER_ONLY_FIELDS = frozenset({"seq", "fingerprint", "lease_expires_at", "published_at"})

#: Columns for tables when stdout is not a terminal: wide enough that a row never wraps.
_PIPED_WIDTH = 200

F = TypeVar("F", bound=Callable[..., Any])


#: The job commands' options, declared once: the group takes them before the subcommand, each job command
#: after it. Their parameter names are `CliConfig`'s fields.
_CONFIG_OPTIONS = (
    click.option(
        "--address",
        envvar="TASKAPP_ADDRESS",
        default=DEFAULT_ADDRESS,
        show_default=True,
        show_envvar=True,
        metavar="HOST:PORT",
        help="The gateway; several, comma separated by IP address, or dns:///NAME:PORT with a record for each.",
    ),
    click.option(
        "--token",
        envvar="TASKAPP_TOKEN",
        show_envvar=True,
        metavar="TOKEN",
        help="Bearer token sent with every call.",
    ),
    click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Machine-readable output: JSON (for watch, one object per line).",
    ),
)


def _config_options(command: F) -> F:
    for option in reversed(_CONFIG_OPTIONS):
        command = option(command)
    return command


@dataclass(frozen=True, slots=True)
class CliConfig:
    """Where the gateway is, the token, and the output format: what every job command is given."""

    address: str
    token: str | None
    as_json: bool

    @contextlib.contextmanager
    def connect(self) -> Iterator[JobClient]:
        """A client of the gateway; an error it answers ends the command with exit code 1 and one line on
        stderr."""
        try:
            channel_target(self.address)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--address'") from None
        try:
            with JobClient(self.address, self.token) as client:
                yield client
        except JobServiceError as exc:
            # UNAVAILABLE may come from the network or from the gateway: naming the address helps with either.
            message = (
                f"gateway at {self.address}: {exc.message}" if exc.code == "UNAVAILABLE" else exc.message
            )
            click.echo(f"taskapp: {exc.code}: {message}", err=True)
            sys.exit(EXIT_ERROR)


_CONFIG_FIELDS = tuple(field.name for field in dataclasses.fields(CliConfig))


def pass_cli_config(command: Callable[..., None]) -> Callable[..., None]:
    """Give a job command the shared options and call it with a `CliConfig` first.

    An option given after the subcommand wins; any other comes from the group, which took it from before the
    subcommand, the environment or the default."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        ctx = click.get_current_context()
        given = {name: kwargs.pop(name) for name in _CONFIG_FIELDS}
        # None only when the command runs outside `main`: then its own options are all there is.
        config = ctx.find_object(CliConfig) or CliConfig(**given)
        after = {
            name: value
            for name, value in given.items()
            if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
        }
        command(dataclasses.replace(config, **after), *args, **kwargs)

    return _config_options(run)


@click.group()
@_config_options
@click.pass_context
def main(ctx: click.Context, address: str, token: str | None, as_json: bool) -> None:
    """taskapp: durable jobs on Celery, submitted over gRPC.

    --address, --token and --json are for the job commands (submit, get, cancel, retry, list, watch, logs,
    stats): give them before the command's name or after it (after wins)."""
    ctx.obj = CliConfig(address, token, as_json)


for _command in taskapp_cli.main.commands.values():
    main.add_command(_command)


@main.command()
def gateway() -> None:
    """Run the gRPC gateway on TASKAPP_GRPC_ADDR (same as `taskapp-gateway`)."""
    from grpc_gateway.server import main as serve_main

    serve_main()


def _jsonable(value: Any) -> Any:
    """Dataclasses as objects (less the server's own fields), datetimes in ISO 8601, states by name."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _jsonable(getattr(value, field.name))
            for field in dataclasses.fields(value)
            if field.name not in _SERVER_ONLY_FIELDS
        }
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        # Protobuf's Struct holds every number as a double: show 1 as it was submitted, not as 1.0.
        return int(value)
    return value


def echo_json(value: Any) -> None:
    click.echo(json.dumps(_jsonable(value), ensure_ascii=False))


def console_out() -> Console:
    """Rich's console on stdout. Piped, it does not cut tables to 80 columns: no screen is there to fit."""
    console = Console()
    if not console.is_terminal:
        console.width = _PIPED_WIDTH
    return console


def when(value: datetime | None) -> str:
    """A time for people: local, to the second, with its UTC offset."""
    return value.astimezone().isoformat(sep=" ", timespec="seconds") if value is not None else ""


def _describe(event: JobEvent) -> str:
    if event.progress_percent is None:
        return event.message
    return f"{event.progress_percent}% {event.message}".rstrip()


def _event_line(event: JobEvent) -> str:
    return f"{event.state:<11}  attempt {event.attempt}  {when(event.at)}  {_describe(event)}".rstrip()


def _follow(client: JobClient, job_id: str, as_json: bool, quiet: bool = False) -> None:
    """Show the job's events (none if quiet) until it ends, then exit: 0 if it succeeded, 3 if it did not."""
    state: JobState | None = None
    console = Console()
    if quiet or as_json or not console.is_terminal:
        for event in client.watch(job_id):
            state = event.state
            if quiet:
                continue
            if as_json:
                echo_json(event)
            else:
                click.echo(_event_line(event))
    else:
        table = Table("STATE", "ATTEMPT", "AT", "MESSAGE", title=f"job {job_id}", title_justify="left")
        with Live(table, console=console, refresh_per_second=8):
            for event in client.watch(job_id):
                table.add_row(*map(Text, (event.state, str(event.attempt), when(event.at), _describe(event))))
                table.title = f"job {job_id}: {event.state}"
                state = event.state
    if state is None or not state.is_terminal:
        click.echo(f"taskapp: the gateway ended the watch before job {job_id} finished", err=True)
        sys.exit(EXIT_ERROR)
    sys.exit(0 if state is JobState.SUCCEEDED else EXIT_JOB_UNSUCCESSFUL)


def _read_payload(value: str) -> str | bytes:
    """The JSON itself, or what `@FILE` or `-` (stdin) holds: one shell argument cannot exceed 128 KiB."""
    if value == "-":
        return sys.stdin.buffer.read()
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_bytes()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]!r}: {exc.strerror}") from None
    return value


def _parse_payload(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        payload = json.loads(_read_payload(value))
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8, -16 or -32
        raise click.BadParameter(f"not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise click.BadParameter('must be a JSON object, e.g. \'{"key": "value"}\'')
    return payload


def _parse_run_at(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time, e.g. 2026-12-01T09:00:00Z") from None


def _parse_labels(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for value in values:
        key, equals, label = value.partition("=")
        if not equals:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE")
        labels[key] = label
    return labels


_PRIORITIES = click.Choice([priority.value for priority in reversed(Priority)])
_STATES = click.Choice([state.value for state in JobState], case_sensitive=False)


@main.command()
@click.argument("type")
@click.option(
    "--payload",
    callback=_parse_payload,
    metavar="JSON",
    help="The job's input, a JSON object; @FILE reads it from FILE and - from stdin (for one over 128 KiB, "
    "more than a shell argument may hold).",
)
@click.option("--id", "job_id", metavar="ID", help="Idempotency key: the same submit again makes no new job.")
@click.option("--priority", type=_PRIORITIES, help="Queue to wait in  [default: default]")
@click.option("--max-attempts", type=int, metavar="N", help="Runs allowed, retries included.")
@click.option("--timeout", "timeout_seconds", type=int, metavar="SECONDS", help="Time limit of one run.")
@click.option(
    "--run-at",
    callback=_parse_run_at,
    metavar="ISO8601",
    help="Run later: at this time, this machine's local time unless it has an offset (Z, +02:00); "
    "a time already past queues the job at once.",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    callback=_parse_labels,
    metavar="KEY=VALUE",
    help="A label to find the job by (again for more).",
)
@click.option(
    "--unique-key",
    metavar="KEY",
    help="No new job while one holds KEY (for --unique-for, or until it has finished): that job is the answer.",
)
@click.option("--unique-for", type=click.IntRange(min=1), metavar="SECONDS", help="How long the key is held.")
@click.option(
    "--concurrency-key",
    metavar="KEY",
    help="At most --concurrency-limit jobs with KEY run at once across every worker; the others wait.",
)
@click.option("--concurrency-limit", type=click.IntRange(min=1), metavar="N", help="The key's limit.")
@click.option(
    "--watch", is_flag=True, help="Then follow the job to its end (exit 0 if it succeeds, 3 if not)."
)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Print the job id alone, even with --json. With --watch, print nothing more: the exit code still "
    "tells how the job ended.",
)
@pass_cli_config
def submit(
    config: CliConfig,
    type: str,
    payload: dict[str, Any] | None,
    job_id: str | None,
    priority: str | None,
    max_attempts: int | None,
    timeout_seconds: int | None,
    run_at: datetime | None,
    labels: dict[str, str],
    unique_key: str | None,
    unique_for: int | None,
    concurrency_key: str | None,
    concurrency_limit: int | None,
    watch: bool,
    quiet: bool,
) -> None:
    """Submit a job of TYPE; print its id.

    In a script, take the id with --quiet: id=$(taskapp submit --quiet echo)"""
    with config.connect() as client:
        submitted = client.submit(
            type,
            payload,
            job_id=job_id,
            priority=Priority(priority) if priority else None,
            max_attempts=max_attempts,
            timeout_seconds=timeout_seconds,
            run_at=run_at,
            labels=labels,
            unique_key=unique_key,
            unique_for=timedelta(seconds=unique_for) if unique_for else None,
            concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit,
        )
        if quiet:
            click.echo(submitted.job_id)
        elif config.as_json:
            echo_json(submitted)
        else:
            again = ""
            if not submitted.created:
                again = " (holds this unique key)" if unique_key else " (submitted before with this id)"
            click.echo(f"job {submitted.job_id}: {submitted.state}{again}")
        if watch:
            _follow(client, submitted.job_id, config.as_json, quiet)


@main.command()
@click.argument("job_id", metavar="ID")
@pass_cli_config
def get(config: CliConfig, job_id: str) -> None:
    """Show one job: its state, attempts, result, last error, times and worker."""
    with config.connect() as client:
        job = client.get(job_id)
    if config.as_json:
        echo_json(job)
    else:
        console_out().print(_job_grid(job))


def _job_grid(job: Job) -> Table:
    progress = f"{job.progress_percent}% {job.progress_message}" if job.progress_percent is not None else ""
    rows = {
        "job": job.job_id,
        "type": job.type,
        "state": job.state,
        "priority": job.priority,
        "attempts": f"{job.attempts} of {job.max_attempts}",
        "timeout": f"{job.timeout_seconds}s",
        "payload": json.dumps(_jsonable(job.payload), ensure_ascii=False),
        "result": json.dumps(_jsonable(job.result), ensure_ascii=False) if job.result is not None else "",
        "last error": job.last_error,
        "progress": progress.rstrip(),
        "created": when(job.created_at),
        "scheduled": when(job.scheduled_at),
        "started": when(job.started_at),
        "finished": when(job.finished_at),
        "worker": job.worker,
    }
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for name, value in rows.items():
        if value:
            # Text, not a str: a payload or an error message must never be read as rich markup.
            grid.add_row(name, Text(value))
    return grid


@main.command()
@click.argument("job_id", metavar="ID")
@pass_cli_config
def cancel(config: CliConfig, job_id: str) -> None:
    """Cancel a job that has not finished.

    A scheduled or queued job never runs; a running one is stopped; a finished one is left as it is."""
    with config.connect() as client:
        outcome = client.cancel(job_id)
    if config.as_json:
        echo_json(outcome)
    elif outcome.cancelled:
        click.echo(f"job {job_id}: {outcome.state}")
    else:
        click.echo(f"job {job_id} not cancelled: it is {outcome.state}")


@main.command()
@click.argument("job_id", metavar="ID")
@pass_cli_config
def retry(config: CliConfig, job_id: str) -> None:
    """Run a job again with fresh attempts.

    Only a FAILED, DEAD_LETTER or CANCELLED job; any other answers FAILED_PRECONDITION."""
    with config.connect() as client:
        job = client.retry(job_id)
    if config.as_json:
        echo_json(job)
    else:
        click.echo(f"job {job.job_id}: {job.state}")


def _filter_options(command: F) -> F:
    """The filters ListJobs, CancelJobs and RetryJobs share, as options; `_job_filter` reads them."""
    options = [
        click.option("--state", type=_STATES, help="Only jobs in this state."),
        click.option("--priority", type=_PRIORITIES, help="Only jobs of this priority."),
        click.option("--type", "job_type", metavar="TYPE", help="Only jobs of this type."),
        click.option(
            "--label",
            "labels",
            multiple=True,
            callback=_parse_labels,
            metavar="KEY=VALUE",
            help="Only jobs with this label (again for more: all must match).",
        ),
        click.option(
            "--created-after", callback=_parse_run_at, metavar="TIME", help="Created at or after (ISO 8601)."
        ),
        click.option(
            "--created-before", callback=_parse_run_at, metavar="TIME", help="Created before (ISO 8601)."
        ),
        click.option("--id-prefix", metavar="PREFIX", help="Only jobs whose id starts with this."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _job_filter(
    state: str | None,
    priority: str | None,
    job_type: str | None,
    labels: dict[str, str],
    created_after: datetime | None,
    created_before: datetime | None,
    id_prefix: str | None,
) -> JobFilter:
    return JobFilter(
        state=JobState(state.upper()) if state else None,
        priority=Priority(priority) if priority else None,
        type=job_type,
        labels=labels,
        created_after=created_after,
        created_before=created_before,
        job_id_prefix=id_prefix,
    )


@main.command("list")
@_filter_options
@click.option("--page-size", type=int, default=0, metavar="N", help="Jobs per page (1-1000)  [default: 50]")
@click.option("--page-token", default="", metavar="TOKEN", help="Where the previous page ended.")
@pass_cli_config
def list_jobs(config: CliConfig, page_size: int, page_token: str, **filters: Any) -> None:
    """List jobs, newest first, a page at a time."""
    filter = _job_filter(**filters)
    with config.connect() as client:
        page = client.list(
            state=filter.state,
            priority=filter.priority,
            type=filter.type,
            labels=filter.labels,
            created_after=filter.created_after,
            created_before=filter.created_before,
            job_id_prefix=filter.job_id_prefix,
            page_size=page_size,
            page_token=page_token,
        )
    if config.as_json:
        echo_json(page)
        return
    table = Table(box=box.SIMPLE_HEAD)
    for header in ("ID", "TYPE", "STATE", "PRIORITY", "ATTEMPTS", "CREATED"):
        # One line per job: on a narrow terminal a cell is cut short rather than wrapped.
        table.add_column(header, no_wrap=True, overflow="ellipsis")
    for job in page.jobs:
        row = (job.job_id, job.type, job.state, job.priority, f"{job.attempts}/{job.max_attempts}")
        table.add_row(*map(Text, (*row, when(job.created_at))))
    console_out().print(table)
    if page.next_page_token:
        click.echo(f"more: --page-token {page.next_page_token}")


def _bulk_command(name: str, action: str, help: str) -> None:
    """`taskapp cancel-jobs` and `taskapp retry-jobs`: the client's `<action>_many` for the filter given."""

    @main.command(name, help=help)
    @_filter_options
    @click.option("--dry-run", is_flag=True, help="Only count the jobs it would act on.")
    @click.option("--limit", type=int, default=0, metavar="N", help="Act on at most N jobs  [default: all]")
    @pass_cli_config
    def bulk(config: CliConfig, dry_run: bool, limit: int, **filters: Any) -> None:
        with config.connect() as client:
            outcome = getattr(client, f"{action}_many")(_job_filter(**filters), dry_run=dry_run, limit=limit)
        if config.as_json:
            echo_json(outcome)
        else:
            verb = {"cancel": "cancelled", "retry": "queued again"}[action]
            would = "would be " if dry_run else ""
            click.echo(
                f"{outcome.acted_on} job(s) {would}{verb}; {outcome.skipped} skipped (their state did not allow it)"
            )


_bulk_command(
    "cancel-jobs",
    "cancel",
    "Cancel every job the filters match that has not finished (at least one filter).",
)
_bulk_command(
    "retry-jobs",
    "retry",
    "Run again every FAILED, DEAD_LETTER or CANCELLED job the filters match (at least one filter).",
)


@main.command()
@click.argument("job_id", metavar="ID")
@pass_cli_config
def watch(config: CliConfig, job_id: str) -> None:
    """Follow a job to its end.

    Exit 0 if it succeeds, 3 if it ends FAILED, DEAD_LETTER or CANCELLED."""
    with config.connect() as client:
        _follow(client, job_id, config.as_json)


@main.command()
@click.argument("job_id", metavar="ID")
@pass_cli_config
def logs(config: CliConfig, job_id: str) -> None:
    """Print what a job's handler logged, oldest first."""
    with config.connect() as client:
        lines = client.logs(job_id)
    if config.as_json:
        echo_json(lines)
        return
    for line in lines:
        click.echo(f"{when(line.at)}  {line.level:<8} attempt {line.attempt}  {line.message}")


@main.command()
@pass_cli_config
def stats(config: CliConfig) -> None:
    """Show queue depths, dead letters and workers.

    Messages waiting per queue, in the dead-letter queue, jobs scheduled for later, workers that answer."""
    with config.connect() as client:
        queue_stats = client.stats()
    if config.as_json:
        echo_json(queue_stats)
        return
    table = Table("QUEUE", "WAITING")
    for priority, depth in queue_stats.depths.items():
        table.add_row(priority, str(depth))
    table.add_row("dead_letter", str(queue_stats.dead_letter))
    console_out().print(table)
    click.echo(f"scheduled: {queue_stats.scheduled}")
    click.echo(f"workers: {', '.join(queue_stats.workers) or 'none answered'}")


# The schedule and flow control verbs live in their own modules, which build on the helpers above.
from grpc_gateway.cli_flow import explain, limits, pause, resume  # noqa: E402
from grpc_gateway.cli_schedules import schedules  # noqa: E402

main.add_command(schedules)
main.add_command(explain)
main.add_command(limits)
main.add_command(pause)
main.add_command(resume)

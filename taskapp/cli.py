"""The `taskapp` command's operations commands: database migrations, the scheduler, reconcile, Flower, the
exporter. `grpc_gateway.cli` adds the gateway and the job commands to them."""

from __future__ import annotations

import sys

import click

from taskapp.config import get_settings, is_loopback, split_address
from taskapp.errors import TaskappError


@click.group()
def main() -> None:
    """taskapp: durable jobs on Celery, submitted over gRPC."""


@main.group()
def db() -> None:
    """The job database."""


@db.command()
def upgrade() -> None:
    """Create or migrate the job tables in DATABASE_URL to the latest schema."""
    import sqlalchemy.exc

    from taskapp.migrate import upgrade as run_upgrade

    settings = get_settings()
    try:
        run_upgrade(settings.database_url)
    except (sqlalchemy.exc.OperationalError, TaskappError) as exc:
        click.echo(f"taskapp: cannot migrate the job database: {exc}", err=True)
        sys.exit(1)
    click.echo("taskapp: job database is at the latest schema")


@main.command("ping-redis")
@click.option("--quiet", is_flag=True, help="Say nothing; the exit code tells.")
def ping_redis(quiet: bool) -> None:
    """Check that the broker at REDIS_URL answers (exit 1 with a clear message if not)."""
    import redis

    from taskapp.redis_target import redis_client

    url = get_settings().redis_url
    try:
        redis_client(url, socket_connect_timeout=2, socket_timeout=2).ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ValueError) as exc:
        if not quiet:
            click.echo(f"taskapp: Redis at {url} is unreachable: {exc}", err=True)
        sys.exit(1)


@main.command()
def scheduler() -> None:
    """Publish due scheduled jobs and owed messages, purge expired jobs (one active among many)."""
    from taskapp.scheduler import main as scheduler_main

    scheduler_main()


@main.command()
def reconcile() -> None:
    """Publish again the jobs SQL says are waiting but the broker has no message for (after Redis lost data)."""
    import redis

    from taskapp.app import app as celery_app
    from taskapp.publisher import CeleryPublisher
    from taskapp.reconcile import reconcile as run_reconcile
    from taskapp.redis_target import redis_client
    from taskapp.store.engine import open_store

    settings = get_settings()
    try:
        report = run_reconcile(
            open_store(settings.database_url),
            CeleryPublisher(celery_app),
            redis_client(settings.redis_url, socket_connect_timeout=5, socket_timeout=30),
        )
    except (TaskappError, redis.exceptions.RedisError) as exc:
        click.echo(f"taskapp: reconcile failed: {exc}", err=True)
        sys.exit(1)
    click.echo(
        f"taskapp: {report.checked} job(s) waiting to run, {report.in_broker} message(s) in the broker, "
        f"{report.republished} job(s) published again"
    )


@main.command()
def flower() -> None:
    """Run Flower on TASKAPP_FLOWER_ADDR with the users of TASKAPP_FLOWER_AUTH (required off loopback)."""
    import os

    settings = get_settings()
    host, port = split_address(settings.flower_addr)
    env = dict(os.environ)
    if settings.flower_auth:
        # Through the environment, not argv: command lines are visible to every user of the machine.
        env["FLOWER_BASIC_AUTH"] = settings.flower_auth
    elif not is_loopback(settings.flower_addr):
        click.echo(
            f"taskapp: refusing to serve Flower on {settings.flower_addr} without TASKAPP_FLOWER_AUTH "
            "(user:password): it can revoke and inspect every job.",
            err=True,
        )
        sys.exit(1)
    else:
        click.echo("taskapp: Flower without TASKAPP_FLOWER_AUTH, on this machine only", err=True)
    os.execvpe(
        "celery",
        [
            "celery",
            "-A",
            "taskapp",
            "flower",
            f"--address={host}",
            f"--port={port}",
            # What Flower has seen survives its restarts: saved every 10 s and when it stops.
            "--persistent=True",
            f"--db={settings.flower_db}",
            "--state_save_interval=10000",
        ],
        env,
    )


@main.command()
def exporter() -> None:
    """Run the Celery exporter (danihodovic/celery-exporter) on TASKAPP_EXPORTER_ADDR, reading REDIS_URL."""
    import os

    from taskapp.redis_target import celery_broker
    from taskapp.routing import DEAD_LETTER_QUEUE, PRIORITY_QUEUES

    settings = get_settings()
    host, port = split_address(settings.exporter_addr)
    # The broker URL through the environment, not argv: it may hold a password.
    broker, transport_options = celery_broker(settings.redis_url)
    env = {**os.environ, "CE_BROKER_URL": broker}
    if settings.log_format == "json":
        env["LOGURU_SERIALIZE"] = "true"  # celery-exporter logs through loguru: one JSON object per line
    argv = [
        "celery-exporter",
        f"--host={host}",
        f"--port={port}",
        # Every queue from the start, `dead_letter` too, which no worker consumes.
        f"--queues={','.join((*PRIORITY_QUEUES, DEAD_LETTER_QUEUE))}",
        # Keep going through a broker restart instead of exiting.
        "--retry-interval=5",
        # Only `master_name` can be said on the command line; the Sentinels are then asked at redis-py's pace.
        *(
            f"--broker-transport-option={name}={value}"
            for name, value in transport_options.items()
            if name == "master_name"
        ),
    ]
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        click.echo(
            "taskapp: celery-exporter is not installed: scripts/setup installs it (in .venv-exporter), "
            "or run scripts/install-celery-exporter VENV_DIR BIN_DIR",
            err=True,
        )
        sys.exit(1)

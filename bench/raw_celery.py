"""Bare Celery with taskapp's Celery settings (celeryconfig.py) and none of taskapp: the baseline.

`celery -A bench.raw_celery worker` runs it with the same queues, prefetch, acks-late and events as ours. `noop`
does nothing and writes nothing anywhere; `noop_with_status` is what a team gluing Celery to a status table by
hand would do at the least: commit RUNNING, then SUCCEEDED, to a row of its own.
"""

from __future__ import annotations

import os
import time
from functools import cache
from typing import Any

import psycopg
import redis
from celery import Celery
from celery.signals import task_received
from celery.worker.request import Request

app = Celery("bench_raw")
app.config_from_object("celeryconfig")
# Only the settings: none of taskapp's tasks, SQL mirror, logging or metrics hooks.
app.conf.imports = ()

NOOP = "bench.noop"
NOOP_WITH_STATUS = "bench.noop_with_status"
#: The status table `noop_with_status` writes to: one row per task, made QUEUED by the benchmark.
STATUS_TABLE = "raw_task_status"
STAMP = "bench.stamp"
#: Where `stamp` notes when each task's message reached the worker and when the task started: task id ->
#: "<delivered> <started>", Unix times.
STARTED = "bench:started"
#: The key the worker's main process adds to the request it hands to a pool process (as taskapp's worker does).
DELIVERED_AT = "bench_delivered_at"


def app_on(broker_url: str) -> Celery:
    """Another raw Celery app with the same settings, sending to another broker: P1's `send_task` loop, whose
    messages must not join taskapp's queue."""
    other = Celery("bench_raw_sender", set_as_current=False)
    other.config_from_object("celeryconfig")
    other.conf.imports = ()
    other.conf.broker_url = broker_url
    return other


@task_received.connect
def stamp_delivery(request: Request, **_: object) -> None:
    request.request_dict[DELIVERED_AT] = time.time()


@app.task(name=NOOP)
def noop() -> None:
    """Nothing: what the raw drain measures is Celery itself."""


@cache
def _broker() -> redis.Redis:
    return redis.Redis.from_url(app.conf.broker_url)


@app.task(name=STAMP, bind=True)
def stamp(self: object) -> None:
    """Notes when it was delivered and started (after the clock is read, so the write is not part of the
    latency)."""
    started = time.time()
    delivered = getattr(self.request, DELIVERED_AT)  # type: ignore[attr-defined]
    _broker().hset(STARTED, self.request.id, f"{delivered} {started}")  # type: ignore[attr-defined]


@cache
def _status_database() -> psycopg.Connection[tuple[Any, ...]]:
    """This pool process's connection (made after the fork), to the database the worker was given."""
    return psycopg.connect(os.environ["DATABASE_URL"].replace("+psycopg", "", 1), autocommit=True)


@app.task(name=NOOP_WITH_STATUS, bind=True)
def noop_with_status(self: object) -> None:
    """Nothing, between two synchronously committed writes of the task's status: the two commits each of
    taskapp's jobs makes (its claim and its outcome), without anything else taskapp does."""
    task_id = self.request.id  # type: ignore[attr-defined]
    database = _status_database()
    database.execute(
        f"UPDATE {STATUS_TABLE} SET state = 'RUNNING', started_at = now() WHERE id = %s", (task_id,)
    )
    database.execute(
        f"UPDATE {STATUS_TABLE} SET state = 'SUCCEEDED', finished_at = now() WHERE id = %s", (task_id,)
    )

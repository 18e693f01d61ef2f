"""Bare Celery with taskapp's Celery settings (celeryconfig.py) and none of taskapp: the baseline.

`celery -A bench.raw_celery worker` runs it with the same queues, prefetch, acks-late and events as ours; its one
task does nothing and writes nothing anywhere.
"""

from __future__ import annotations

import time
from functools import cache

import redis
from celery import Celery
from celery.signals import task_received
from celery.worker.request import Request

app = Celery("bench_raw")
app.config_from_object("celeryconfig")
# Only the settings: none of taskapp's tasks, SQL mirror, logging or metrics hooks.
app.conf.imports = ()

NOOP = "bench.noop"
STAMP = "bench.stamp"
#: Where `stamp` notes when each task's message reached the worker and when the task started: task id ->
#: "<delivered> <started>", Unix times.
STARTED = "bench:started"
#: The key the worker's main process adds to the request it hands to a pool process (as taskapp's worker does).
DELIVERED_AT = "bench_delivered_at"


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

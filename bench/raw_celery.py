"""Bare Celery with taskapp's Celery settings (celeryconfig.py) and none of taskapp: the baseline.

`celery -A bench.raw_celery worker` runs it with the same queues, prefetch, acks-late and events as ours; its one
task does nothing and writes nothing anywhere.
"""

from __future__ import annotations

import time
from functools import cache

import redis
from celery import Celery

app = Celery("bench_raw")
app.config_from_object("celeryconfig")
# Only the settings: none of taskapp's tasks, SQL mirror, logging or metrics hooks.
app.conf.imports = ()

NOOP = "bench.noop"
STAMP = "bench.stamp"
#: Where `stamp` notes when each task started: task id -> Unix time.
STARTED = "bench:started"


@app.task(name=NOOP)
def noop() -> None:
    """Nothing: what the raw drain measures is Celery itself."""


@cache
def _broker() -> redis.Redis:
    return redis.Redis.from_url(app.conf.broker_url)


@app.task(name=STAMP, bind=True)
def stamp(self: object) -> None:
    """Notes when it started (after the clock is read, so the write is not part of the latency)."""
    started = time.time()
    _broker().hset(STARTED, self.request.id, started)  # type: ignore[attr-defined]

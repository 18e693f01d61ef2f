"""Bare Celery with taskapp's Celery settings (celeryconfig.py) and none of taskapp: the baseline.

`celery -A bench.raw_celery worker` runs it with the same queues, prefetch, acks-late and events as ours; its one
task does nothing and writes nothing anywhere.
"""

from __future__ import annotations

from celery import Celery

app = Celery("bench_raw")
app.config_from_object("celeryconfig")
# Only the settings: none of taskapp's tasks, SQL mirror, logging or metrics hooks.
app.conf.imports = ()

NOOP = "bench.noop"


@app.task(name=NOOP)
def noop() -> None:
    """Nothing: what the raw drain measures is Celery itself."""

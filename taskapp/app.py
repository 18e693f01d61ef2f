"""The Celery application. Its settings live in `celeryconfig.py`; its tasks are built in `taskapp.tasks`."""

from __future__ import annotations

from urllib.parse import urlsplit

from celery import Celery

app = Celery("taskapp")
app.config_from_object("celeryconfig")
# kombu's Redis transport, building one Redis client per channel rather than one per command: taskapp's code,
# not a setting, so raw Celery in the benchmark runs without it.
match urlsplit(app.conf.broker_url).scheme:
    case "redis" | "rediss":
        app.conf.broker_transport = "taskapp.broker_transport:Transport"
    case "sentinel":
        app.conf.broker_transport = "taskapp.broker_transport:SentinelTransport"
# The worker's task events leave in groups on a timer (`taskapp.worker_events`): taskapp's code too.
app.conf.worker_consumer = "taskapp.worker_events:JobConsumer"

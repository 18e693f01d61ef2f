"""The Celery application. Its settings live in `celeryconfig.py`; its tasks are built in `taskapp.tasks`."""

from __future__ import annotations

from celery import Celery

app = Celery("taskapp")
app.config_from_object("celeryconfig")

"""Mirrors task outcomes into SQL from Celery signals: SUCCEEDED with the result, FAILED with the error.

RUNNING is written by the claim in `taskapp.tasks`. Every write here is guarded (the job must still be RUNNING,
and on the same attempt when known), so a terminated or cancelled run never overwrites CANCELLED.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import task_failure, task_revoked, task_success

from taskapp.jobs import JobState
from taskapp.store import utcnow
from taskapp.tasks import JobTask, store_for

log = logging.getLogger(__name__)


def _attempt(task: Task) -> int | None:
    return getattr(task.request, "taskapp_attempt", None)


def record_success(sender: Task | None = None, result: Any = None, **_: Any) -> None:
    if not isinstance(sender, JobTask):
        return
    attempt = _attempt(sender)
    if attempt is None:
        return
    store_for(sender.app).finish(sender.request.id, attempt, JobState.SUCCEEDED, utcnow(), result=result)


def record_failure(
    sender: Task | None = None, task_id: str | None = None, exception: BaseException | None = None, **_: Any
) -> None:
    if not isinstance(sender, JobTask) or task_id is None:
        return
    error = f"{type(exception).__name__}: {exception}" if exception is not None else "unknown error"
    store_for(sender.app).finish(task_id, _attempt(sender), JobState.FAILED, utcnow(), error=error)


def record_revoked(sender: Task | None = None, request: Any = None, **_: Any) -> None:
    """A revoke from outside the API (Flower, `celery control revoke`) cancels the job in SQL too."""
    if not isinstance(sender, JobTask) or request is None:
        return
    store_for(sender.app).cancel(request.id, utcnow())


task_success.connect(record_success)
task_failure.connect(record_failure)
task_revoked.connect(record_revoked)

"""Mirrors task outcomes into SQL from Celery signals: SUCCEEDED with the result; FAILED, or DEAD_LETTER when a
retryable failure has used up the attempts.

RUNNING is written by the claim and RETRYING by `JobTask.retry` (`taskapp.tasks`). Every write here is guarded
(the job must still be RUNNING, on the same attempt when known), so a terminated or cancelled run never
overwrites CANCELLED.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import TimeLimitExceeded
from celery.signals import task_failure, task_revoked, task_success
from celery.utils.time import get_exponential_backoff_interval

from taskapp.jobs import JobState, SentMessage
from taskapp.publisher import CeleryPublisher
from taskapp.store import utcnow
from taskapp.tasks import RETRY_BACKOFF_MAX, JobTask, describe, end_failed_run, store_for

log = logging.getLogger(__name__)


def _attempt(task: Task) -> int | None:
    return getattr(task.request, "taskapp_attempt", None)


def record_success(sender: Task | None = None, result: Any = None, **_: Any) -> None:
    if not isinstance(sender, JobTask):
        return
    attempt = _attempt(sender)
    if attempt is not None:
        store_for(sender.app).succeed(sender.request.id, attempt, result, utcnow())


def record_failure(
    sender: Task | None = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    """A run failed and Celery will not retry it: FAILED, or DEAD_LETTER if retryable (attempts used up).

    A hard time limit is the exception: the pool killed the run, so Celery could not retry it; if attempts are
    left, the job is published again here.
    """
    if not isinstance(sender, JobTask) or task_id is None:
        return
    retryable = sender.is_retryable(exception)
    retry_in = None
    if retryable:
        retry_in = float(
            get_exponential_backoff_interval(
                factor=1, retries=sender.request.retries or 0, maximum=RETRY_BACKOFF_MAX, full_jitter=False
            )
        )
    timelimit = sender.request.timelimit or (None, None)
    error = describe(exception, timelimit[1])
    state = end_failed_run(sender, task_id, _attempt(sender), error, retry_in=retry_in)
    if state is JobState.RETRYING and isinstance(exception, TimeLimitExceeded):
        store = store_for(sender.app)
        job = store.get(task_id)
        if job is not None:
            CeleryPublisher(sender.app).publish(job, countdown=retry_in)
            store.mark_published([SentMessage.of(job)], utcnow())


def record_revoked(sender: Task | None = None, request: Any = None, **_: Any) -> None:
    """A revoke from outside the API (Flower, `celery control revoke`) cancels the job in SQL too."""
    if not isinstance(sender, JobTask) or request is None:
        return
    store_for(sender.app).cancel(request.id, utcnow())


task_success.connect(record_success)
task_failure.connect(record_failure)
task_revoked.connect(record_revoked)

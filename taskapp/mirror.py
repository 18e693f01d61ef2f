"""Mirrors task outcomes into SQL from Celery signals: SUCCEEDED with the result; a failure as `taskapp.policy`
decides (FAILED, DEAD_LETTER, or another attempt after a run killed at its hard time limit).

RUNNING is written by the claim and a retry's RETRYING by `JobTask.retry` (`taskapp.tasks`). Every write here is
guarded (the job must still be RUNNING on the same attempt), so a terminated or cancelled run never overwrites
CANCELLED, and a signal that fires twice records once.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import task_failure, task_revoked, task_success

from taskapp import policy
from taskapp.clock import utcnow
from taskapp.jobs import Job, SentMessage
from taskapp.publisher import CeleryPublisher
from taskapp.tasks import JobTask, current_run, describe, end_failed_run, worker_store

log = logging.getLogger(__name__)


def _run(task: Task) -> Job | None:
    """The run as its claim left it, in the pool process that ran it."""
    return getattr(task.request, "taskapp_run", None)


def record_success(sender: Task | None = None, result: Any = None, **_: Any) -> None:
    if not isinstance(sender, JobTask):
        return
    run = _run(sender)
    if run is not None:
        worker_store().succeed(run.job_id, run.attempts, result, utcnow())


def record_failure(
    sender: Task | None = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    """A run failed and Celery will not retry it. Usually in the pool process that ran it; for a run killed at
    its hard time limit, in the worker's main process, which must read the run from SQL and, if the policy
    gives the job another attempt, publish it (Celery cannot retry a run it killed)."""
    if not isinstance(sender, JobTask) or task_id is None:
        return
    run = _run(sender) or current_run(task_id)
    if run is None:
        return
    failure = policy.classify(exception, sender.handler.retry_on)
    timeout = (sender.request.timelimit or (None, None))[1]
    decision = end_failed_run(sender.app, run, failure, describe(exception, timeout))
    if isinstance(decision, policy.Retry):
        CeleryPublisher(sender.app).publish(run, countdown=decision.delay)
        worker_store().mark_published([SentMessage.retry_of(run)], utcnow())


def record_revoked(sender: Task | None = None, request: Any = None, **_: Any) -> None:
    """A revoke from outside the API (Flower, `celery control revoke`) cancels the job in SQL too."""
    if not isinstance(sender, JobTask) or request is None:
        return
    worker_store().cancel(request.id, utcnow())


task_success.connect(record_success)
task_failure.connect(record_failure)
task_revoked.connect(record_revoked)

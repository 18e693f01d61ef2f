"""Mirrors task outcomes into SQL from Celery signals: SUCCEEDED with the result; a failure as `taskapp.policy`
decides (FAILED, DEAD_LETTER, or another attempt after a run killed at its hard time limit).

RUNNING is written by the claim and a retry's RETRYING by `JobTask.retry` (`taskapp.tasks`). Every write here is
guarded (the job must still be RUNNING on the same attempt), so a terminated or cancelled run never overwrites
CANCELLED, and a signal that fires twice records once. In a pool process, a write waits for a database that is
away (`keep_writing`), with the message unacknowledged meanwhile.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import task_failure, task_revoked, task_success

from taskapp import flow, policy
from taskapp.clock import utcnow
from taskapp.errors import StoreUnavailable
from taskapp.jobs import Job, JobState
from taskapp.publisher import CeleryPublisher
from taskapp.routing import job_id_of, task_id_for
from taskapp.tasks import (
    JobTask,
    current_run,
    describe,
    end_failed_run,
    keep_writing,
    lease_keeper,
    worker_store,
)

log = logging.getLogger(__name__)

#: A run whose outcome the guarded write refused: its job moved on (cancelled, or its lease lapsed and
#: another run took over, as when this worker stalled).
LATE = "run %s reported its %s too late: its job has moved on, and the outcome is not stored"


def _run(task: Task) -> Job | None:
    """The run as its claim left it, in the pool process that ran it."""
    return getattr(task.request, "taskapp_run", None)


def record_success(sender: Task | None = None, result: Any = None, **_: Any) -> None:
    if not isinstance(sender, JobTask):
        return
    run = _run(sender)
    if run is None:
        return
    stored = keep_writing(
        lambda: worker_store().succeed(run.job_id, run.attempts, result, utcnow()),
        f"the success of {sender.request.id}",
        sender.request.id,
    )
    if not stored:
        log.warning(LATE, sender.request.id, "success")
        return
    flow.let_out_after(worker_store(), CeleryPublisher(sender.app), run)


def record_failure(
    sender: Task | None = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    """A run failed and Celery will not retry it. Usually in the pool process that ran it; for a run killed at
    its hard time limit, in the worker's main process, which reads the run from SQL (and must not wait for a
    database that is away: the run's lease lapses, and the scheduler rescues the job)."""
    if not isinstance(sender, JobTask) or task_id is None:
        return
    failure = policy.classify(exception, sender.handler.retry_on)
    error = describe(exception, (sender.request.timelimit or (None, None))[1])
    run = _run(sender)
    if run is not None:
        decision = keep_writing(
            lambda: end_failed_run(sender.app, run, failure, error), f"the failure of {task_id}", task_id
        )
        if decision is None:
            log.warning(LATE, task_id, "failure")
        return
    try:
        lost = current_run(task_id, lease_keeper.worker)
        if lost is not None:
            end_failed_run(sender.app, lost, failure, error)
    except StoreUnavailable as exc:
        log.warning("run %s failed while the job database is away: %s", task_id, exc)


def record_revoked(sender: Task | None = None, request: Any = None, **_: Any) -> None:
    """A revoke from outside the API (Flower, `celery control revoke`) cancels the job in SQL too, if it names
    the job's current run or the one its waiting message is for: a revoke of an earlier run (the one a cancel
    stopped, say, before a RetryJob) must not cancel a later one."""
    if not isinstance(sender, JobTask) or request is None:
        return
    store = worker_store()
    job = store.get(job_id_of(request.id))
    if job is not None and request.id == (job.task_id if job.state is JobState.RUNNING else task_id_for(job)):
        store.cancel(job.job_id, utcnow())


task_success.connect(record_success)
task_failure.connect(record_failure)
task_revoked.connect(record_revoked)

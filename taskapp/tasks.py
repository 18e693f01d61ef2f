"""One Celery task per job type, named `handlers.<type>`, each claiming its job in SQL before running it.

The claim (QUEUED/RETRYING -> RUNNING, one atomic UPDATE that counts the attempt) is the gate: a message for a
job that is cancelled, finished or out of attempts is acknowledged and dropped without running the handler, and
a second delivery while a run is live is put off until that run's lease ends. A failed run's fate is decided by
`taskapp.policy` and applied here: retries go through Celery's `autoretry_for` (`JobTask.retry`), final failures
through the failure signal (`taskapp.mirror`), and a pool process that dies mid-run is noticed by `JobRequest`
in the worker's main process.
"""

from __future__ import annotations

import logging
import os
import random
import time
from datetime import timedelta
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.worker.request import Request

from taskapp import policy, worker_shutdown
from taskapp.app import app
from taskapp.clock import utcnow
from taskapp.config import get_settings
from taskapp.errors import PermanentError, StoreUnavailable
from taskapp.joblogs import JobLogCapture
from taskapp.jobs import HARD_LIMIT_GRACE, Job, JobState, SentMessage, hard_time_limit, lease_seconds
from taskapp.metrics import record_changes
from taskapp.notify import ChangePublisher
from taskapp.publisher import CeleryPublisher
from taskapp.registry import Handler, HandlerRegistry, JobContext, load_handlers
from taskapp.routing import queue_for, task_name
from taskapp.store.engine import open_store
from taskapp.store.port import JobStore

log = logging.getLogger(__name__)

_stores: dict[int, JobStore] = {}


def worker_store() -> JobStore:
    """This process's store: connections must not cross a fork, so each pool process opens its own."""
    store = _stores.get(os.getpid())
    if store is None:
        settings = get_settings()
        store = _stores[os.getpid()] = open_store(
            settings.database_url, change_hooks=[ChangePublisher(settings.redis_url), record_changes]
        )
    return store


def describe(exc: BaseException | None, timeout_seconds: int | None = None) -> str:
    """The `last_error` text for a failed run."""
    if isinstance(exc, SoftTimeLimitExceeded):
        limit = f" ({timeout_seconds} s)" if timeout_seconds else ""
        return f"timeout: the run took longer than timeout_seconds{limit}"
    if isinstance(exc, TimeLimitExceeded):
        return f"timeout: the run ignored its timeout and was killed {HARD_LIMIT_GRACE} s later"
    if exc is None:
        return "unknown error"
    return f"{type(exc).__name__}: {exc}"


def end_failed_run(
    celery_app: Celery, run: Job, failure: policy.Failure, error: str, *, worker: str = ""
) -> policy.Decision | None:
    """Apply the policy's decision for `run` (the job as its claim left it), which ended in `failure`.

    Returns the decision, or None when the job had already moved on (the write's guard refused it). A retry's
    message is the caller's to see to, since how it comes depends on what ended the run.
    """
    decision = policy.decide(failure, run.attempts, run.max_attempts, random.random())
    store = worker_store()
    now = utcnow()
    match decision:
        case policy.Retry(delay):
            retry_at = now + timedelta(seconds=delay)
            moved = store.fail_run(run.job_id, run.attempts, JobState.RETRYING, error, now, retry_at=retry_at)
        case policy.Finish(state):
            moved = store.fail_run(run.job_id, run.attempts, state, error, now)
            if moved and state is JobState.DEAD_LETTER:
                CeleryPublisher(celery_app).dead_letter(
                    run.job_id, task_name(run.type), queue_for(run.priority), error
                )
        case policy.Release():
            moved = store.release(run.job_id, worker, now)
        case policy.Nothing():
            moved = True
    return decision if moved else None


def current_run(job_id: str) -> Job | None:
    """The job if it is RUNNING: the worker's main process does not know which attempt its pool process ran."""
    job = worker_store().get(job_id)
    return job if job is not None and job.state is JobState.RUNNING else None


class JobRequest(Request):  # type: ignore[misc]
    """A delivery of a job's message, as the worker's main process sees it."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        stopped_by_worker = self._already_cancelled or worker_shutdown.stopping_runs.is_set()
        failure = policy.classify(exc, (), stopped_by_worker=stopped_by_worker)
        # A pool process that died (or that this worker stopped) never reported: record its run here, before
        # Celery gives the message back (reject_on_worker_lost), so a job that kills its worker every time
        # ends in the dead letters. Other failures were reported by the run itself (`taskapp.mirror`).
        if failure in (policy.Failure.WORKER_LOST, policy.Failure.SHUTDOWN) and (run := current_run(self.id)):
            decision = end_failed_run(
                self.task.app, run, failure, f"worker process lost: {exc}", worker=self.hostname
            )
            if isinstance(decision, policy.Retry):
                # The broker keeps this very message for the next attempt: none is owed.
                worker_store().mark_published([SentMessage.retry_of(run)], utcnow())
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


class JobTask(Task):  # type: ignore[misc]
    """Runs one job type. `handler` is set per task class by `register_tasks`."""

    handler: Handler
    Request = JobRequest
    #: Messages carry only the job id; nothing to check against the function signature.
    typing = False

    def retry(self, *args: Any, exc: BaseException | None = None, **options: Any) -> Any:
        """`autoretry_for` caught a retryable error or a timeout: ask the policy. A retry is recorded in SQL (the
        error and the time of the next attempt) before Celery publishes its message; anything else goes on
        to the failure signal as the error it is."""
        run: Job | None = getattr(self.request, "taskapp_run", None)
        if run is None or exc is None:
            return super().retry(*args, exc=exc, **options)
        failure = policy.classify(exc, self.handler.retry_on)
        timeout = (self.request.timelimit or (None, None))[1]
        decision = end_failed_run(self.app, run, failure, describe(exc, timeout))
        if decision is None:
            log.info("job %s moved on while failing: no retry", run.job_id)
            raise Ignore()
        if not isinstance(decision, policy.Retry):
            raise exc  # Out of attempts: the failure signal records the final state.
        # The policy's delay and its leave to retry replace Celery's own count and back-off.
        options.update(countdown=decision.delay, max_retries=self.request.retries + 1)
        try:
            return super().retry(*args, exc=exc, **options)
        except Retry:
            # Celery raises Retry once the next attempt's message is sent. Had sending failed, the job would stay
            # owed a message, and the scheduler would send it.
            worker_store().mark_published([SentMessage.retry_of(run)], utcnow())
            raise


def run_job(task: JobTask, **_ignored: Any) -> Any:
    job_id = task.request.id
    store = worker_store()
    hard_limit = (task.request.timelimit or (None, None))[0] or hard_time_limit(task.handler.timeout_seconds)
    now = utcnow()
    job = store.claim(job_id, task.request.hostname or "", now, lease_seconds(hard_limit))
    if job is None:
        current = store.get(job_id)
        match policy.after_refused_claim(current, now):
            case policy.EndLostRun():
                assert current is not None
                end_failed_run(
                    task.app, current, policy.Failure.WORKER_LOST, "worker lost during the last attempt"
                )
            case policy.PutOff(delay):
                assert current is not None
                log.info("job %s is running elsewhere: checking again in %.0f s", job_id, delay)
                CeleryPublisher(task.app).publish(current, countdown=delay)
            case policy.Drop():
                log.info("job %s is not claimable (cancelled, finished or unknown): message dropped", job_id)
        raise Ignore()
    # The run as claimed: outcomes are guarded on its attempt, the policy reads its attempts left.
    task.request.taskapp_run = job
    payload = task.handler.schema.model_validate(job.payload)
    logger = logging.getLogger(f"handlers.{job.type}")
    capture = JobLogCapture(store, job_id, job.attempts)
    logger.addFilter(capture)
    logger.addHandler(capture)
    try:
        context = JobContext(
            job_id=job_id,
            attempt=job.attempts,
            logger=logger,
            progress_sink=ProgressReporter(store, job_id, job.attempts),
        )
        return task.handler.func(payload, context)
    finally:
        logger.removeHandler(capture)
        logger.removeFilter(capture)
        capture.finish()


class ProgressReporter:
    """Writes a run's progress reports, at most a few per second (and always the 100 % one)."""

    MIN_INTERVAL = 0.25

    def __init__(self, store: JobStore, job_id: str, attempt: int) -> None:
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self._last = 0.0

    def __call__(self, percent: int, message: str) -> None:
        now = time.monotonic()
        if percent < 100 and now - self._last < self.MIN_INTERVAL:
            return
        self._last = now
        try:
            self.store.report_progress(self.job_id, self.attempt, percent, message, utcnow())
        except StoreUnavailable as exc:
            log.warning("job %s: progress not recorded: %s", self.job_id, exc)  # The run goes on.


def register_tasks(celery_app: Celery, registry: HandlerRegistry) -> None:
    for handler in registry:
        celery_app.task(
            name=task_name(handler.type),
            base=JobTask,
            bind=True,
            shared=False,
            handler=handler,
            # These errors call `JobTask.retry`, which asks `taskapp.policy` whether and when to run again.
            autoretry_for=(*handler.retry_on, SoftTimeLimitExceeded),
            dont_autoretry_for=(PermanentError,),
        )(run_job)


register_tasks(app, load_handlers(get_settings().handler_modules))

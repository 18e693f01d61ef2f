"""One Celery task per job type, named `handlers.<type>`, each claiming its job in SQL before running it.

The claim (QUEUED/RETRYING -> RUNNING, one atomic UPDATE that counts the attempt) is the gate: a message for a
job that is cancelled, finished or out of attempts is acknowledged and dropped without running the handler, and
a second delivery while a run is live is put off until that run's lease ends. Retries use Celery's
`autoretry_for` with exponential back-off, bounded by the attempts left in SQL. Outcomes are written by
`taskapp.mirror`; a pool process that dies mid-run is noticed by `JobRequest` in the worker's main process.
"""

from __future__ import annotations

import logging
import os
import random
import time
from datetime import timedelta
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Celery, Task
from celery.exceptions import Ignore, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.worker.request import Request

from taskapp import worker_shutdown
from taskapp.app import app
from taskapp.errors import PermanentError, StoreUnavailable
from taskapp.joblogs import JobLogCapture
from taskapp.jobs import HARD_LIMIT_GRACE, Job, JobState, SentMessage, hard_time_limit, lease_seconds
from taskapp.metrics import record_changes
from taskapp.notify import ChangePublisher
from taskapp.publisher import CeleryPublisher
from taskapp.registry import Handler, HandlerRegistry, JobContext, load_handlers
from taskapp.routing import queue_for, task_name
from taskapp.store import SqlJobStore, utcnow

log = logging.getLogger(__name__)

#: Exponential back-off: 1 s, 2 s, 4 s ... capped, each stretched by up to this fraction at random. Celery's own
#: full jitter (anywhere from 0 to the back-off) could make a later wait shorter than an earlier one.
RETRY_BACKOFF_MAX = 600
RETRY_JITTER = 0.25
#: Failures that another attempt may cure, whatever the handler declares.
TIMEOUTS = (SoftTimeLimitExceeded, TimeLimitExceeded)

_stores: dict[tuple[int, str], SqlJobStore] = {}


def store_for(celery_app: Celery) -> SqlJobStore:
    """This process's store: connections must not cross a fork, so each pool process opens its own."""
    key = (os.getpid(), celery_app.conf.taskapp_database_url)
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = SqlJobStore.from_url(
            key[1], change_hooks=[ChangePublisher(celery_app.conf.broker_url), record_changes]
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


class JobRequest(Request):  # type: ignore[misc]
    """A delivery of a job's message, as the worker's main process sees it."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        if self._already_cancelled or worker_shutdown.stopping_runs.is_set():
            # The worker itself stopped this run to shut down (`taskapp.worker_shutdown`, or a cold shutdown):
            # not the job's failure. Back to QUEUED, the attempt uncounted; Celery gives the message back.
            store_for(self.task.app).release(self.id, self.hostname, utcnow())
            super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
            return
        # Billiard may report the child's exit (SystemExit) before Celery turns it into WorkerLostError.
        if isinstance(exc, (WorkerLostError, SystemExit, KeyboardInterrupt)):
            # The pool process died mid-run; Celery gives the message back (reject_on_worker_lost). Count the
            # run as a failed attempt first, so a job that kills its worker every time ends in the dead letters.
            state = end_failed_run(self.task, self.id, None, f"worker process lost: {exc}", retry_in=0.0)
            if state is JobState.RETRYING:
                # The broker keeps this very message for the next attempt: none is owed.
                store = store_for(self.task.app)
                job = store.get(self.id)
                if job is not None:
                    store.mark_published([SentMessage.of(job)], utcnow())
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


class JobTask(Task):  # type: ignore[misc]
    """Runs one job type. `handler` is set per task class by `register_tasks`."""

    handler: Handler
    Request = JobRequest
    #: Messages carry only the job id; nothing to check against the function signature.
    typing = False

    def is_retryable(self, exc: BaseException | None) -> bool:
        if exc is None or isinstance(exc, PermanentError):
            return False
        return isinstance(exc, (*self.handler.retry_on, *TIMEOUTS))

    def retry(
        self, *args: Any, exc: BaseException | None = None, countdown: float | None = None, **options: Any
    ) -> Any:
        """Record RETRYING in SQL, with the error and the time of the next attempt, before Celery publishes it."""
        attempt = getattr(self.request, "taskapp_attempt", None)
        max_retries = options.get("max_retries", self.max_retries)
        out_of_retries = max_retries is not None and self.request.retries + 1 > max_retries
        if attempt is None or countdown is None or out_of_retries:
            return super().retry(*args, exc=exc, countdown=countdown, **options)
        countdown *= 1 + random.uniform(0, RETRY_JITTER)
        now = utcnow()
        state = store_for(self.app).fail_run(
            self.request.id,
            attempt,
            describe(exc, self.request.timelimit[1]),
            now,
            retry_at=now + timedelta(seconds=countdown),
        )
        if state is not JobState.RETRYING:
            log.info("job %s moved on (%s) while failing: no retry", self.request.id, state)
            raise Ignore()
        try:
            return super().retry(*args, exc=exc, countdown=countdown, **options)
        except Retry:
            # Celery raises Retry once the next attempt's message is sent. Had sending failed, the job would stay
            # owed a message, and the scheduler would send it.
            sent = SentMessage(self.request.id, JobState.RETRYING, attempt)
            store_for(self.app).mark_published([sent], utcnow())
            raise


def end_failed_run(
    task: JobTask, job_id: str, attempt: int | None, error: str, *, retry_in: float | None
) -> JobState | None:
    """Write a failed run's outcome; park the message in the dead letters if the job has no attempts left.

    `retry_in` None means retrying cannot help (FAILED). Otherwise the job is RETRYING (and the caller sees to
    it that a message follows) or, out of attempts, DEAD_LETTER.
    """
    now = utcnow()
    retry_at = None if retry_in is None else now + timedelta(seconds=retry_in)
    store = store_for(task.app)
    state = store.fail_run(job_id, attempt, error, now, retry_at=retry_at)
    if state is JobState.DEAD_LETTER:
        job = store.get(job_id)
        origin = queue_for(job.priority) if job else ""
        CeleryPublisher(task.app).dead_letter(job_id, task.name, origin, error)
    return state


def _put_off(task: JobTask, job: Job) -> None:
    """Another run of the job may still be live: look again when its lease ends, never drop the message."""
    assert job.lease_expires_at is not None
    wait = max(1.0, (job.lease_expires_at - utcnow()).total_seconds() + 1)
    log.info("job %s is running elsewhere: checking again in %.0f s", job.job_id, wait)
    CeleryPublisher(task.app).publish(job, countdown=wait)


def run_job(task: JobTask, **_ignored: Any) -> Any:
    job_id = task.request.id
    store = store_for(task.app)
    hard_limit = (task.request.timelimit or (None, None))[0] or hard_time_limit(task.handler.timeout_seconds)
    now = utcnow()
    job = store.claim(job_id, task.request.hostname or "", now, lease_seconds(hard_limit))
    if job is None:
        current = store.get(job_id)
        if current is not None and current.state is JobState.RUNNING:
            if current.lease_expires_at is None or current.lease_expires_at < now:
                # Its last run's worker died and no attempts are left.
                end_failed_run(task, job_id, None, "worker lost during the last attempt", retry_in=0.0)
            else:
                _put_off(task, current)
        else:
            log.info("job %s is not claimable (cancelled, finished or unknown): message dropped", job_id)
        raise Ignore()
    # The mirror's outcome updates are guarded on this attempt number.
    task.request.taskapp_attempt = job.attempts
    # Celery stops retrying when the attempts left in SQL are used up (worker losses count too).
    task.override_max_retries = task.request.retries + job.max_attempts - job.attempts
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

    def __init__(self, store: SqlJobStore, job_id: str, attempt: int) -> None:
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
            log.warning(
                "job %s: progress not recorded: %s", self.job_id, exc
            )  # Informational: the run goes on.


def register_tasks(celery_app: Celery, registry: HandlerRegistry) -> None:
    for handler in registry:
        celery_app.task(
            name=task_name(handler.type),
            base=JobTask,
            bind=True,
            shared=False,
            handler=handler,
            autoretry_for=(*handler.retry_on, SoftTimeLimitExceeded),
            dont_autoretry_for=(PermanentError,),
            retry_backoff=True,
            retry_backoff_max=RETRY_BACKOFF_MAX,
            retry_jitter=False,
        )(run_job)


register_tasks(app, load_handlers(app.conf.taskapp_handler_modules))

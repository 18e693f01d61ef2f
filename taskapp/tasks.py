"""One Celery task per job type, named `handlers.<type>`, each claiming its job in SQL before running it.

The claim (QUEUED, or RETRYING once its back-off has ended -> RUNNING; one atomic UPDATE that counts the attempt
and records the delivery's task id) is the gate: a message for a job that is cancelled, finished, out of
attempts or running elsewhere is acknowledged and dropped without running the handler. A failed run's fate is
decided by `taskapp.policy` and applied here: a retry is written to SQL as RETRYING, and the scheduler publishes
it when its back-off ends; a final failure goes through the failure signal (`taskapp.mirror`). In the worker's
main process, `JobRequest` notices a pool process that died mid-run, `LeaseKeeper` keeps each run's lease alive
(or stops the run), and `ConsumingPause` stops consuming while the database is away.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from celery import Celery, Task
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import task_received, worker_ready
from celery.signals import worker_shutdown as celery_worker_shutdown
from celery.worker import state as worker_state
from celery.worker.request import Request

from taskapp import outcomes, policy, start_latency, worker_shutdown
from taskapp.app import app
from taskapp.clock import utcnow
from taskapp.config import get_settings
from taskapp.errors import PermanentError, StoreUnavailable
from taskapp.faults import AFTER_DELIVERY_BEFORE_RUN, fault_point
from taskapp.joblogs import JobLogCapture
from taskapp.jobs import HARD_LIMIT_GRACE, Job, JobState
from taskapp.metrics import job_wait_seconds, record_changes
from taskapp.notify import ChangePublisher
from taskapp.publisher import CeleryPublisher
from taskapp.registry import Handler, HandlerRegistry, JobContext, load_handlers
from taskapp.routing import job_id_of, task_name
from taskapp.store.engine import open_store
from taskapp.store.port import JobStore
from taskapp.worker_beats import Heartbeat
from taskapp.worker_leases import EndingRuns, LeaseKeeper
from taskapp.worker_outage import ConsumingPause

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between tries of an outcome write while the database is away: from the first to the most.
WRITE_RETRY_FIRST, WRITE_RETRY_MOST = 0.1, 2.0

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


#: Made in the worker's main process as it loads its tasks, and known to the pool processes it forks.
ending_runs = EndingRuns(Path(tempfile.gettempdir()) / f"taskapp-ending-runs-{os.getpid()}")
#: The worker's main process keeps the leases of its runs, and stops consuming while the database is away.
consuming_pause = ConsumingPause(lambda: worker_store().ping())
lease_keeper = LeaseKeeper(
    worker_store(),
    "",
    get_settings().lease_seconds,
    runs=lambda: list(worker_state.active_requests),
    ending=ending_runs,
    on_unavailable=consuming_pause.begin_soon,
)


def start_worker_threads(sender: Any = None, **_: Any) -> None:
    """In the worker's main process, once it consumes (`sender` is its Celery `Consumer`)."""
    lease_keeper.worker = sender.hostname
    consuming_pause.worker_ready(sender)
    lease_keeper.start()
    types = tuple(sorted(handler.type for handler in HANDLERS))
    Heartbeat(
        worker_store(), sender.hostname, sender.controller.concurrency, lease_keeper.renew_every, types
    ).start()


def remove_ending_runs(**_: Any) -> None:
    shutil.rmtree(ending_runs.directory, ignore_errors=True)


worker_ready.connect(start_worker_threads)
celery_worker_shutdown.connect(remove_ending_runs)


def stamp_delivery(request: Request, **_: Any) -> None:
    """In the worker's main process, as a message arrives: the request handed to a pool process says when."""
    request.request_dict[start_latency.DELIVERED_AT] = time.time()


task_received.connect(stamp_delivery)


def die_if_armed(**_: Any) -> None:
    """A worker lost just after it took a message (its host, say), for the tests of what heals that."""
    fault_point(AFTER_DELIVERY_BEFORE_RUN)


task_received.connect(die_if_armed)


class WaitForDatabase(Reject):  # type: ignore[misc]
    """Raised by a delivery that cannot reach SQL to claim its job: the message goes back to its queue, and the
    worker stops consuming until the database answers (`ConsumingPause`)."""


def keep_writing(write: Callable[[], T], what: str, task_id: str) -> T:
    """A run's outcome write, in its pool process, tried until the database takes it. Meanwhile the message
    stays unacknowledged, and the run is marked as ending so that the worker does not stop it for want of lease
    renewals: if the database answers before the lease ends, the outcome is written and the job never runs
    again; if it answers later, the scheduler may have rescued the job, and then the guarded write refuses this
    outcome."""
    delay = WRITE_RETRY_FIRST
    waited = False
    try:
        while True:
            try:
                result = write()
            except StoreUnavailable as exc:
                if not waited:
                    log.warning("%s waits for the job database: %s", what, exc)
                    ending_runs.mark(task_id)
                    waited = True
                time.sleep(delay)
                delay = min(WRITE_RETRY_MOST, delay * 2)
                continue
            if waited:
                log.warning("%s written", what)
            return result
    finally:
        if waited:
            ending_runs.unmark(task_id)


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
    celery_app: Celery,
    run: Job,
    failure: policy.Failure,
    error: str,
    *,
    worker: str = "",
    lapsed: bool = False,
) -> policy.Decision | None:
    """`taskapp.outcomes.end_failed_run` with this process's store and publisher."""
    return outcomes.end_failed_run(
        worker_store(), CeleryPublisher(celery_app), run, failure, error, worker=worker, lapsed=lapsed
    )


def current_run(task_id: str, worker: str) -> Job | None:
    """The job, if it is RUNNING on this delivery (its task id) and this worker: the worker's main process does
    not know which attempt its pool process ran."""
    job = worker_store().get(job_id_of(task_id))
    if job is None or job.state is not JobState.RUNNING or (job.task_id, job.worker) != (task_id, worker):
        return None
    return job


class JobRequest(Request):  # type: ignore[misc]
    """A delivery of a job's message, as the worker's main process sees it."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        if isinstance(exc, WaitForDatabase):
            consuming_pause.begin(str(exc.reason))
        elif lease_keeper.stopped.pop(self.id, None) is not None:
            # This worker stopped the run (its lease could not be kept, or its job moved on): SQL holds the
            # job's truth, and the scheduler rescues a lapsed run. The message is not wanted back.
            self.acknowledge()
        else:
            self._record_lost_run(exc)
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def _record_lost_run(self, exc: BaseException) -> None:
        """A pool process that died (or that this worker's shutdown stopped) never reported: record its run here,
        so a job that kills its worker every time ends in the dead letters. Other failures were reported by the
        run itself (`taskapp.mirror`)."""
        stopped_by_worker = self._already_cancelled or worker_shutdown.stopping_runs.is_set()
        failure = policy.classify(exc, (), stopped_by_worker=stopped_by_worker)
        if failure not in (policy.Failure.WORKER_LOST, policy.Failure.SHUTDOWN):
            return
        try:
            run = current_run(self.id, self.hostname)
            decision = run and end_failed_run(
                self.task.app, run, failure, f"worker process lost: {exc}", worker=self.hostname
            )
        except StoreUnavailable as exc:
            # The event loop must not wait: Celery gives the message back, and the lease lapses into a rescue.
            log.warning("run %s lost while the job database is away: %s", self.id, exc)
            return
        if isinstance(decision, policy.Retry | policy.Finish):
            # SQL has the outcome; the scheduler publishes the retry when due. Celery must not requeue this.
            self.acknowledge()


class JobTask(Task):  # type: ignore[misc]
    """Runs one job type. `handler` is set per task class by `register_tasks`."""

    handler: Handler
    Request = JobRequest
    #: Messages carry only the job id; nothing to check against the function signature.
    typing = False

    def retry(self, *args: Any, exc: BaseException | None = None, **options: Any) -> Any:
        """`autoretry_for` caught a retryable error or a timeout: ask the policy. A retry is RETRYING in SQL,
        published by the scheduler when its back-off ends; anything else goes on to the failure signal as the
        error it is."""
        run: Job | None = getattr(self.request, "taskapp_run", None)
        if run is None or exc is None:
            return super().retry(*args, exc=exc, **options)
        failure = policy.classify(exc, self.handler.retry_on)
        timeout = (self.request.timelimit or (None, None))[1]
        decision = keep_writing(
            lambda: end_failed_run(self.app, run, failure, describe(exc, timeout)),
            f"the retry of {self.request.id}",
            self.request.id,
        )
        if decision is None:
            log.info("job %s moved on while failing: no retry", run.job_id)
        elif not isinstance(decision, policy.Retry):
            raise exc  # Out of attempts: the failure signal records the final state.
        raise Ignore()


def run_job(task: JobTask, **_ignored: Any) -> Any:
    started = time.time()
    task_id = task.request.id
    job_id = job_id_of(task_id)
    store = worker_store()
    now = utcnow()
    try:
        job = store.claim(job_id, task.request.hostname or "", now, get_settings().lease_seconds, task_id)
        claimed = time.time()
        current = None if job is not None else store.get(job_id)
    except StoreUnavailable as exc:
        raise WaitForDatabase(str(exc), requeue=True) from None
    if job is None and current is not None and current.waiting_for.in_line:
        log.info(
            "job %s waits in line (%s): its message is taken until a slot frees", job_id, current.waiting_for
        )
        raise Ignore()
    if job is None:
        match policy.after_refused_claim(current, now):
            case policy.EndLostRun():
                assert current is not None
                keep_writing(
                    lambda: end_failed_run(
                        task.app, current, policy.Failure.WORKER_LOST, "worker lost", lapsed=True
                    ),
                    f"the lost run of {job_id}",
                    task_id,
                )
            case policy.PutOff(delay):
                assert current is not None
                log.info("job %s is not due yet: delivering it again in %.1f s", job_id, delay)
                CeleryPublisher(task.app).publish(current, countdown=delay)
            case policy.Drop():
                log.info(
                    "job %s is not claimable (cancelled, finished, or run elsewhere): message dropped", job_id
                )
        raise Ignore()
    start_latency.claimed(job_id, task.request, started, claimed)
    if job.started_at is not None:
        wait = (job.started_at - job.scheduled_at).total_seconds()
        job_wait_seconds(job.type, job.priority.value).observe(max(0.0, wait))
        # A rate's start taken a little ahead (`taskapp.rates.hold`): the run starts at it. Only then does it
        # sleep: even sleep(0) lets go of the GIL, and a busy thread of the process keeps it a switch interval.
        ahead = (job.started_at - utcnow()).total_seconds()
        if ahead > 0:
            time.sleep(ahead)
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
            progress_sink=ProgressReporter(
                store, job_id, job.attempts, time.monotonic() + job.timeout_seconds
            ),
        )
        return task.handler.func(payload, context)
    finally:
        logger.removeHandler(capture)
        logger.removeFilter(capture)
        capture.finish()


class ProgressReporter:
    """Writes a run's progress reports, at most a few per second (and always the 100 % one)."""

    MIN_INTERVAL = 0.25

    def __init__(self, store: JobStore, job_id: str, attempt: int, deadline: float = math.inf) -> None:
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        #: When the run's time limit is up (`time.monotonic`).
        self.deadline = deadline
        self._last = 0.0

    def __call__(self, percent: int, message: str) -> None:
        now = time.monotonic()
        if now > self.deadline:
            # The time limit's exception landed in a report's database call and the driver turned it into a
            # connection error, which a report does not let end the run: end it here instead.
            raise SoftTimeLimitExceeded()
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


#: The job types of this process, their modules imported: each a Celery task, and named in the worker's beats.
HANDLERS = load_handlers(get_settings().handler_modules)
register_tasks(app, HANDLERS)

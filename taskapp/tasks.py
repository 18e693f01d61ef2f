"""One Celery task per job type, named `handlers.<type>`, each claiming its job in SQL before running it.

The claim (QUEUED/RETRYING -> RUNNING, one atomic UPDATE) is the gate: a message for a job that is cancelled,
already running or finished is acknowledged and dropped without running the handler. Outcomes are written by
the signal receivers in `taskapp.mirror`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore

from taskapp.app import app
from taskapp.registry import Handler, HandlerRegistry, JobContext, load_handlers
from taskapp.routing import task_name
from taskapp.store import SqlJobStore, utcnow

log = logging.getLogger(__name__)

_stores: dict[tuple[int, str], SqlJobStore] = {}


def store_for(celery_app: Celery) -> SqlJobStore:
    """This process's store: connections must not cross a fork, so each pool process opens its own."""
    key = (os.getpid(), celery_app.conf.taskapp_database_url)
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = SqlJobStore.from_url(key[1])
    return store


class JobTask(Task):  # type: ignore[misc]
    """Runs one job type. `handler` is set per task class by `register_tasks`."""

    handler: Handler
    #: Messages carry only the job id; nothing to check against the function signature.
    typing = False


def run_job(task: JobTask, **_ignored: Any) -> Any:
    job_id = task.request.id
    job = store_for(task.app).claim(job_id, task.request.hostname or "", utcnow())
    if job is None:
        log.info("job %s is not claimable (cancelled, running or finished): message dropped", job_id)
        raise Ignore()
    # The mirror's outcome updates are guarded on this attempt number.
    task.request.taskapp_attempt = job.attempts
    payload = task.handler.schema.model_validate(job.payload)
    context = JobContext(
        job_id=job_id, attempt=job.attempts, logger=logging.getLogger(f"handlers.{job.type}")
    )
    return task.handler.func(payload, context)


def register_tasks(celery_app: Celery, registry: HandlerRegistry) -> None:
    for handler in registry:
        celery_app.task(
            name=task_name(handler.type),
            base=JobTask,
            bind=True,
            shared=False,
            handler=handler,
        )(run_job)


register_tasks(app, load_handlers(app.conf.taskapp_handler_modules))

"""The broker side of the service: publish a job's message, stop a running job."""

from __future__ import annotations

import logging
from typing import Protocol

import kombu.exceptions
import redis.exceptions
from celery import Celery

from taskapp.errors import BrokerUnavailable
from taskapp.jobs import Job
from taskapp.routing import queue_for, task_name

log = logging.getLogger(__name__)

#: What a lost broker looks like from kombu and redis-py.
_BROKER_ERRORS = (
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    OSError,
)


class Publisher(Protocol):
    def publish(self, job: Job) -> None:
        """Send the job's message to its priority queue; raise `BrokerUnavailable` if the broker is down."""
        ...

    def terminate(self, job_id: str) -> None:
        """Ask the workers to stop the job's current run (best effort: SQL already says CANCELLED)."""
        ...


class CeleryPublisher:
    """Publishes by task name with `send_task`: the gateway never imports handler code."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def publish(self, job: Job) -> None:
        try:
            self.app.send_task(
                task_name(job.type),
                task_id=job.job_id,
                queue=queue_for(job.priority),
                # The worker reads the payload from SQL at claim time: messages carry no user data.
                kwargs={},
            )
        except _BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"broker unavailable: {exc}") from exc

    def terminate(self, job_id: str) -> None:
        try:
            self.app.control.revoke(job_id, terminate=True, signal="SIGKILL")
        except _BROKER_ERRORS as exc:
            # The job is CANCELLED in SQL already; its run's outcome will not be recorded over that.
            log.warning("could not broadcast termination of job %s: %s", job_id, exc)

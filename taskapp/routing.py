"""Priorities to broker queues, and job types to Celery task names."""

from __future__ import annotations

from taskapp.jobs import Priority

#: Queue names in the order workers consume them (`-Q critical,high,default,low`).
PRIORITY_QUEUES: tuple[str, ...] = tuple(p.value for p in Priority)
DEAD_LETTER_QUEUE = "dead_letter"
TASK_PREFIX = "handlers."


def queue_for(priority: Priority) -> str:
    return priority.value


def task_name(job_type: str) -> str:
    """The Celery task that runs a job type; the gateway publishes by this name alone."""
    return TASK_PREFIX + job_type

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


#: kombu's Redis transport keeps a queue's messages with a priority in sub-lists `<queue>\x06\x16<step>`.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)


def broker_keys(queue: str) -> list[str]:
    """The Redis lists holding a queue's waiting messages: the queue itself and its priority sub-lists."""
    return [queue, *(f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS)]

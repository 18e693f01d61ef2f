"""Priorities to broker queues, job types to Celery task names, and runs of a job to Celery task ids."""

from __future__ import annotations

from taskapp.jobs import Job, Priority

#: Queue names in the order workers consume them (`-Q critical,high,default,low`).
PRIORITY_QUEUES: tuple[str, ...] = tuple(p.value for p in Priority)
DEAD_LETTER_QUEUE = "dead_letter"
TASK_PREFIX = "handlers."


def queue_for(priority: Priority) -> str:
    return priority.value


def task_name(job_type: str) -> str:
    """The Celery task that runs a job type; the gateway publishes by this name alone."""
    return TASK_PREFIX + job_type


#: Between a job's id and its run's number in a Celery task id; job ids cannot hold it.
RUN_SEPARATOR = "@"


def task_id_for(job: Job) -> str:
    """The Celery task id of the job's next run, `<job_id>@<run>`: one per run, so that a revoke (a cancel)
    reaches that run alone, never a later one of the same job, and Flower and logs still show the job's id."""
    return f"{job.job_id}{RUN_SEPARATOR}{job.runs + 1}"


def job_id_of(task_id: str) -> str:
    """The job a Celery task id runs (a task id without a run number is the job id itself)."""
    job_id, separator, _ = task_id.rpartition(RUN_SEPARATOR)
    return job_id if separator else task_id


#: kombu's Redis transport keeps a queue's messages with a priority in sub-lists `<queue>\x06\x16<step>`.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)


def broker_keys(queue: str) -> list[str]:
    """The Redis lists holding a queue's waiting messages: the queue itself and its priority sub-lists."""
    return [queue, *(f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS)]

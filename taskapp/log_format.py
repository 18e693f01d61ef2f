"""`TASKAPP_LOG_FORMAT=json`: one JSON object per log line, and on every worker line about a job its id,
type and attempt, so a log pipeline can follow a job without parsing messages."""

from __future__ import annotations

import logging
from typing import Any

from celery import current_task
from pythonjsonlogger.json import JsonFormatter

from taskapp.routing import TASK_PREFIX, job_id_of


class JobFields(logging.Filter):
    """Adds `job_id`, `job_type` and `attempt` to records logged while a job runs (in a pool process), or
    about one (Celery's own lines carry the task's id and name in their arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        task: Any = current_task
        request = getattr(task, "request", None) if task else None
        job_id = getattr(request, "id", None)
        name = getattr(task, "name", None) if job_id else None
        if job_id is None and isinstance(record.args, dict):
            job_id, name = record.args.get("id"), record.args.get("name")
        if isinstance(job_id, str) and isinstance(name, str) and name.startswith(TASK_PREFIX):
            record.job_id = job_id_of(job_id)
            record.job_type = name.removeprefix(TASK_PREFIX)
            run = getattr(request, "taskapp_run", None)
            if run is not None:
                record.attempt = run.attempts
        return True


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "{asctime}{levelname}{name}{processName}{message}",
        style="{",
        rename_fields={"levelname": "level", "asctime": "time", "processName": "process"},
    )


def setup_process_logging(log_format: str) -> None:
    """Logging for the gateway and the scheduler (the worker's is Celery's, see `taskapp.worker_logging`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if log_format == "json":
        use_json()


def use_json(logger: logging.Logger | None = None) -> None:
    """Give every handler of `logger` (default: the root logger) the JSON format and the job fields."""
    for handler in (logger or logging.getLogger()).handlers:
        handler.setFormatter(json_formatter())
        handler.addFilter(JobFields())

"""The worker's log names jobs by id, never by content: payloads and results can hold secrets
(docs/celery-on-redis.md).

Celery logs each task's return value at INFO ("succeeded in 0.01s: {...}"); httpx logs every request's full
URL at INFO, credentials and query string included. The first is cut down to its size, the second to
warnings.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger

from taskapp.config import get_settings
from taskapp.log_format import use_json
from taskapp.tasks import WaitForDatabase


class HideReturnValues(logging.Filter):
    """Celery passes the return value twice: in the message's arguments and in the record's `data` extra
    (which a JSON formatter prints)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict) and "return_value" in record.args:
            record.args = {**record.args, "return_value": _size_of(record.args["return_value"])}
        data = getattr(record, "data", None)
        if isinstance(data, dict) and "return_value" in data:
            record.data = {**data, "return_value": _size_of(data["return_value"])}
        return True


def _size_of(value: Any) -> str:
    return f"<result, {len(repr(value))} characters>"


def json_when_asked(logger: logging.Logger | None = None, **_: Any) -> None:
    if logger is not None and get_settings().log_format == "json":
        use_json(logger)


class QuietDatabaseWaits(logging.Filter):
    """A delivery that gives its message back because the job database is away (`WaitForDatabase`) is not an
    error worth a traceback: the worker says once that it stops consuming (`taskapp.worker_outage`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], WaitForDatabase))


after_setup_logger.connect(json_when_asked)
after_setup_task_logger.connect(json_when_asked)
logging.getLogger("celery.app.trace").addFilter(HideReturnValues())
logging.getLogger("celery.app.trace").addFilter(QuietDatabaseWaits())
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

"""The worker's log names jobs by id, never by content: payloads and results can hold secrets (DESIGN.md §7).

Celery logs each task's return value at INFO ("succeeded in 0.01s: {...}"); httpx logs every request's full
URL at INFO, credentials and query string included. The first is cut down to its size, the second to
warnings.
"""

from __future__ import annotations

import logging


class HideReturnValues(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict) and "return_value" in record.args:
            size = len(repr(record.args["return_value"]))
            record.args = {**record.args, "return_value": f"<result, {size} characters>"}
        return True


logging.getLogger("celery.app.trace").addFilter(HideReturnValues())
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

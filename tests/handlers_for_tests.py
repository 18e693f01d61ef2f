"""Job types only the tests register (TASKAPP_HANDLER_MODULES=tests.handlers_for_tests)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from pydantic import BaseModel

from taskapp.registry import JobContext, handler


class CrashPayload(BaseModel):
    pass


@handler("crash", schema=CrashPayload)
def crash(payload: CrashPayload, job: JobContext) -> None:
    """Kills the worker process running it, every time."""
    os.kill(os.getpid(), signal.SIGKILL)


class FileGate(BaseModel):
    path: str


class GateClosed(Exception):
    """Raised while the gate file exists; retryable."""


@handler("fail_while_file", schema=FileGate, retry_on=(GateClosed,))
def fail_while_file(payload: FileGate, job: JobContext) -> str:
    """Fails while `path` exists: a failure whose cause the test can take away."""
    if Path(payload.path).exists():
        raise GateClosed(f"{payload.path} still exists")
    return "gate open"

"""Job types only the tests register (TASKAPP_HANDLER_MODULES=tests.handlers_for_tests)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
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


class Chatty(BaseModel):
    lines: int
    fail_times: int = 0


class ChattyFailure(Exception):
    """Raised by `chatty` on its first `fail_times` attempts; retryable."""


@handler("chatty", schema=Chatty, retry_on=(ChattyFailure,))
def chatty(payload: Chatty, job: JobContext) -> int:
    """Logs `lines` lines on each attempt, failing the first `fail_times` attempts."""
    for n in range(1, payload.lines + 1):
        job.logger.info("line %d of attempt %d", n, job.attempt)
    if job.attempt <= payload.fail_times:
        raise ChattyFailure(f"attempt {job.attempt} fails on purpose")
    return payload.lines


class Steps(BaseModel):
    steps: list[int]
    pause: float = 0.3


@handler("progress", schema=Steps)
def progress(payload: Steps, job: JobContext) -> None:
    """Reports each percent in `steps`, `pause` seconds apart."""
    for percent in payload.steps:
        job.report_progress(percent, f"step {percent}")
        time.sleep(payload.pause)


class RecordedRun(BaseModel):
    #: The execution record: a file outside taskapp's SQL (`tests.helpers.ExecutionRecord`).
    record: str
    #: While this file exists the run holds, ticking; then it sleeps `seconds` and finishes.
    hold: str = ""
    seconds: float = 0.0


def note(record: str, event: str, job: JobContext) -> None:
    """One line, in one write to a file opened for appending: lines of concurrent runs never interleave."""
    line = f"{event} {job.job_id} {job.attempt} {os.getpid()} {time.time():.6f}\n"
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@handler("recorded", schema=RecordedRun, max_attempts=5)
def recorded(payload: RecordedRun, job: JobContext) -> dict[str, int]:
    """Writes down when each run starts, that it is alive while it holds, and when it finishes."""
    note(payload.record, "start", job)
    while payload.hold and Path(payload.hold).exists():
        note(payload.record, "tick", job)
        time.sleep(0.2)
    time.sleep(payload.seconds)
    note(payload.record, "finish", job)
    return {"attempt": job.attempt}


class Stubborn(BaseModel):
    seconds: float


@handler("stubborn", schema=Stubborn)
def stubborn(payload: Stubborn, job: JobContext) -> None:
    """Ignores its soft time limit: only the hard one stops it."""
    deadline = time.monotonic() + payload.seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.1)
        except SoftTimeLimitExceeded:
            job.logger.info("ignoring the soft time limit")

"""What a handler logs through `JobContext.logger`, kept per attempt in `job_logs` for GetJobLogs.

Bounded per job (lines and bytes): once a job's logs are full, further records are dropped before they are
even formatted or passed on to the worker's own log, and one WARNING line per attempt says how many were
dropped. Lines are written in batches, so a chatty handler costs one INSERT per batch, not one per line.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from taskapp.errors import StoreUnavailable
from taskapp.jobs import LogLine
from taskapp.store.port import JobStore

MAX_LINES_PER_JOB = 1_000
MAX_BYTES_PER_JOB = 256 * 1024
MAX_LINE_CHARS = 4_096
FLUSH_EVERY_LINES = 200
FLUSH_EVERY_SECONDS = 2.0


class JobLogCapture(logging.Handler):
    """Attached to the handler's logger for one run: a filter that drops records past the cap, and a handler
    that buffers the rest and writes them to SQL."""

    def __init__(self, store: JobStore, job_id: str, attempt: int) -> None:
        super().__init__(level=logging.NOTSET)
        self.setFormatter(logging.Formatter("%(message)s"))
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self.dropped = 0
        self._room: tuple[int, int] | None = None
        self._buffer: list[LogLine] = []
        self._last_flush = time.monotonic()

    def filter(self, record: logging.LogRecord) -> bool:
        """Used as the logger's filter: past the cap the record goes nowhere, not even to the worker's log."""
        if self._room is None:
            try:
                lines, size = self.store.log_usage(self.job_id)
            except StoreUnavailable:
                lines = size = 0  # Logs are best effort: the run goes on, bounded by this attempt's share.
            self._room = (MAX_LINES_PER_JOB - lines, MAX_BYTES_PER_JOB - size)
        if self._room[0] <= 0 or self._room[1] <= 0:
            self.dropped += 1
            return False
        return True

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)[:MAX_LINE_CHARS]
        assert self._room is not None
        lines_left, bytes_left = self._room
        if len(message) > bytes_left:
            self.dropped += 1
            self._room = (lines_left, 0)
            return
        self._room = (lines_left - 1, bytes_left - len(message))
        at = datetime.fromtimestamp(record.created, UTC)
        self._buffer.append(LogLine(at=at, level=record.levelname, attempt=self.attempt, message=message))
        if (
            len(self._buffer) >= FLUSH_EVERY_LINES
            or time.monotonic() - self._last_flush > FLUSH_EVERY_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        """Write the buffered lines; if the database is away they are counted as dropped, never raised: a
        job's outcome must not depend on its logs."""
        try:
            self.store.append_logs(self.job_id, self._buffer)
        except StoreUnavailable:
            self.dropped += len(self._buffer)
        self._buffer = []
        self._last_flush = time.monotonic()

    def finish(self) -> None:
        """End of the run: write what is buffered, and say how much was dropped."""
        if self.dropped:
            self._buffer.append(
                LogLine(
                    at=datetime.now(UTC),
                    level="WARNING",
                    attempt=self.attempt,
                    message=f"log cap reached: {self.dropped} line(s) of this attempt dropped",
                )
            )
        self.flush()

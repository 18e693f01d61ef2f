"""The outbox's last step, taken in bulk: jobs are marked published in SQL a moment after their messages went
out, many in one UPDATE.

A job committed but not marked published is owed a message, and the scheduler sends one after a grace of
seconds (`taskapp.scheduler`); marking it is what tells the scheduler the gateway did. Marking each batch as it
was published cost a committed statement (and a WAL flush) per SubmitJob at low load, on the path every call
waited for. Marks wait here for `MARK_INTERVAL`, far inside the grace, and go out together; a mark lost (the
database away, or the gateway killed meanwhile) costs a harmless duplicate message, which the claim drops.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime

from taskapp.errors import StoreUnavailable
from taskapp.jobs import SentMessage
from taskapp.store.port import JobStore

log = logging.getLogger(__name__)

#: Seconds a mark waits for others: a twentieth of the scheduler's grace for owed messages.
MARK_INTERVAL = 0.25


def mark_published(store: JobStore, messages: Sequence[SentMessage], now: datetime) -> None:
    """Mark the jobs published; if the database is away the mark is lost, and costs a duplicate message."""
    try:
        store.mark_published(messages, now)
    except StoreUnavailable as exc:
        log.warning("%d job(s) published but not marked so: %s", len(messages), exc)


class PublishedMarks:
    def __init__(
        self, store: JobStore, clock: Callable[[], datetime], interval: float = MARK_INTERVAL
    ) -> None:
        self.store = store
        self.clock = clock
        self.interval = interval
        self._pending: list[SentMessage] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._mark_forever, name="published-marks", daemon=True)
        self._thread.start()

    def add(self, messages: Sequence[SentMessage]) -> None:
        with self._lock:
            self._pending.extend(messages)

    def flush(self) -> None:
        with self._lock:
            messages, self._pending = self._pending, []
        if messages:
            mark_published(self.store, messages, self.clock())

    def close(self) -> None:
        """Mark what is pending, and stop."""
        self._closed.set()
        self._thread.join()
        self.flush()

    def _mark_forever(self) -> None:
        while not self._closed.wait(self.interval):
            self.flush()

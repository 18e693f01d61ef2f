"""A worker's beat: its main process writes who it is and that it is alive to SQL, as often as it renews
leases, so the console can show every worker with its concurrency and when it was last heard from (a worker that
died says nothing; its row just stops being renewed)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import datetime

from taskapp.clock import utcnow
from taskapp.errors import StoreUnavailable
from taskapp.jobs import WorkerBeat
from taskapp.store.port import JobStore

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self, store: JobStore, name: str, concurrency: int, every: float, types: tuple[str, ...] = ()
    ) -> None:
        self.store = store
        self.types = types
        self.name = name
        self.concurrency = concurrency
        self.every = every
        self.started_at: datetime = utcnow()

    def beat(self) -> None:
        self.store.beat(
            WorkerBeat(
                name=self.name,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                concurrency=self.concurrency,
                started_at=self.started_at,
                seen_at=utcnow(),
                types=self.types,
            )
        )

    def start(self) -> None:
        threading.Thread(target=self._run, name="heartbeat", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                self.beat()
            except StoreUnavailable:
                pass  # The lease keeper says the database is away; the next beat says it is back.
            except Exception:
                log.exception("worker heartbeat failed; trying again")
            time.sleep(self.every)

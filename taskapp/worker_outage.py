"""A worker while its job database is away: it takes no messages until the database answers again.

A delivery whose claim cannot reach SQL gives its message back (`taskapp.tasks.WaitForDatabase`, a requeueing
reject). Were the worker to go on consuming, it would spin through the whole queue, handing every message
back; instead its main process stops consuming its queues, checks the database every second, and consumes
them again, in their priority order, once it answers. One warning when it stops, one when it starts again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

from taskapp.errors import StoreUnavailable
from taskapp.publisher import BROKER_ERRORS

log = logging.getLogger(__name__)

#: Seconds between checks of the database while paused.
CHECK_EVERY_SECONDS = 1.0


class ConsumingPause:
    def __init__(self, app: Celery, ping: Callable[[], None]) -> None:
        self.app = app
        self.ping = ping
        self.paused = False
        self.worker = ""
        #: The queues the worker consumes, in priority order (`-Q`), known once it is ready.
        self.queues: list[str] = []

    def worker_ready(self, consumer: Any) -> None:
        self.worker = consumer.hostname
        self.queues = [queue.name for queue in consumer.task_consumer.queues]

    def begin(self, reason: str) -> None:
        """Stop consuming until the database answers (called in the main process's event loop)."""
        if self.paused or not self.queues:
            return
        self.paused = True
        log.warning("job database unavailable (%s): taking no messages until it answers", reason)
        for queue in self.queues:
            self.app.control.cancel_consumer(queue, destination=[self.worker], reply=False)
        threading.Thread(target=self._resume_when_back, name="database-outage", daemon=True).start()

    def _resume_when_back(self) -> None:
        while True:
            time.sleep(CHECK_EVERY_SECONDS)
            try:
                self.ping()
                for queue in self.queues:
                    self.app.control.add_consumer(
                        queue, routing_key=queue, destination=[self.worker], reply=False
                    )
            except (StoreUnavailable, *BROKER_ERRORS):
                continue
            break
        log.warning("job database answers again: taking messages")
        self.paused = False

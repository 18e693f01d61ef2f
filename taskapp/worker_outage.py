"""A worker while its job database is away: it takes no messages until the database answers again.

A delivery whose claim cannot reach SQL gives its message back (`taskapp.tasks.WaitForDatabase`, a requeueing
reject). Were the worker to go on consuming, it would spin through the whole queue, handing every message
back (or its lease keeper finds the database away: its pool processes may all be waiting to write outcomes);
instead its main process stops consuming its queues, a thread checks the database every second, and once
it answers the worker consumes its queues again, in their priority order. One warning when it stops, one when
it starts again. It acts on its own consumer, in the consumer's event loop: a broadcast would also reach other
workers that share its node name.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from taskapp.errors import StoreUnavailable

log = logging.getLogger(__name__)

#: Seconds between checks of the database while paused, and between looks at the result from the event loop.
CHECK_EVERY_SECONDS = 1.0


class ConsumingPause:
    def __init__(self, ping: Callable[[], None]) -> None:
        self.ping = ping
        self.paused = False
        self._consumer: Any = None
        #: The queues the worker consumes, in priority order (`-Q`), known once it is ready.
        self._queues: list[Any] = []
        self._answered = threading.Event()
        self._looking: Any = None

    def worker_ready(self, consumer: Any) -> None:
        self._consumer = consumer
        self._queues = list(consumer.task_consumer.queues)

    def begin(self, reason: str) -> None:
        """Stop consuming until the database answers. Called in the consumer's event loop."""
        if self.paused or self._consumer is None:
            return
        self.paused = True
        self._answered.clear()
        log.warning("%s: taking no messages until the job database answers", reason)
        for queue in self._queues:
            self._consumer.cancel_task_queue(queue.name)
        threading.Thread(target=self._wait_for_database, name="database-outage", daemon=True).start()
        self._looking = self._consumer.timer.call_repeatedly(CHECK_EVERY_SECONDS, self._resume_if_answered)

    def begin_soon(self, reason: str) -> None:
        """`begin`, from another thread of the main process (its lease keeper's): in the consumer's event loop,
        through its hub's `call_soon` (made to be called from other threads; it wakes the loop), or by its timer
        (a thread of its own) when the consumer runs without an event loop."""
        if self._consumer is None:
            return
        if self._consumer.hub is not None:
            self._consumer.hub.call_soon(self.begin, reason)
        else:
            self._consumer.timer.call_after(0, self.begin, (reason,))

    def _wait_for_database(self) -> None:
        """Off the event loop: a database cut off by the network makes each check wait its connect timeout."""
        while True:
            time.sleep(CHECK_EVERY_SECONDS)
            try:
                self.ping()
            except StoreUnavailable:
                continue
            self._answered.set()
            return

    def _resume_if_answered(self) -> None:
        if not self.paused or not self._answered.is_set():
            return
        self._looking.cancel()
        for queue in self._queues:
            self._consumer.add_task_queue(queue.name, routing_key=queue.routing_key)
        self.paused = False
        log.warning("job database answers again: taking messages")

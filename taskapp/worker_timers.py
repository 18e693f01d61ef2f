"""The worker's event-loop timer sheds the entries of runs that ended, so the main process stays flat.

Celery enforces a run's time limits with two timer entries in the worker's event loop (the soft and the hard
limit). When the run ends the entries are cancelled, but kombu's timer keeps a cancelled entry in its heap until
its time comes: `timeout_seconds` later, up to a day. At a few hundred jobs a second that is hundreds of
thousands of dead entries, about 0.6 KiB each per job (celery#1129, celery#5200). Every few seconds this drops
them from the heap, in the event loop that owns it. kombu has no public way to: this reaches its heap.
"""

from __future__ import annotations

import heapq
from typing import Any

from celery.signals import worker_ready

#: Seconds between sheddings: the heap holds at most the entries cancelled within this time.
SHED_EVERY_SECONDS = 5.0


def shed_cancelled(timer: Any) -> int:
    """Drop the cancelled entries from a kombu timer's heap; how many were dropped."""
    heap = timer._queue
    live = [event for event in heap if not event.entry.canceled]
    dropped = len(heap) - len(live)
    if dropped:
        heapq.heapify(live)
        heap[:] = live
    return dropped


def shed_regularly(sender: Any = None, **_: Any) -> None:
    hub = getattr(sender, "hub", None)
    if hub is not None:
        hub.timer.call_repeatedly(SHED_EVERY_SECONDS, shed_cancelled, (hub.timer,))


worker_ready.connect(shed_regularly)

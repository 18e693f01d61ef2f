"""The worker's task events (for Flower and the exporter) leave in groups, every `EVENT_FLUSH_SECONDS`.

Celery buffers a worker's task events and flushes them on the event loop's next turn: nearly one PUBLISH per
event, three per job (received, started, succeeded), each a Redis round trip that the worker's main process
waits for while no message is taken or acknowledged. At a full drain that was a third of the main process's
time, and the main process sets the pace of every pool process. Here the first buffered event starts a timer and
its flush sends whatever came meanwhile as one message (Celery flushes sooner by itself once a buffer holds 24),
in the grouped form Celery's receivers unpack event by event. Events reach Flower and the exporter at most that
much later; SQL, not the events, holds a job's state. A worker that stops flushes what is left first.
"""

from __future__ import annotations

from celery.worker.consumer import Consumer
from vine import promise

#: How long a buffered task event waits for others to leave with it.
EVENT_FLUSH_SECONDS = 0.05


class JobConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, flushing its buffered task events on a timer rather than at every turn of the loop."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._flush_timer_set = False
        self._set_flush_timer_promise = promise(self._set_flush_timer)

    def on_send_event_buffered(self) -> None:
        # Events are sent from any thread; the loop's timers are its own, so the timer is set on the loop.
        if self.hub:
            self.hub.call_soon(self._set_flush_timer_promise)

    def _set_flush_timer(self) -> None:
        if not self._flush_timer_set:
            self._flush_timer_set = True
            self.hub.call_later(EVENT_FLUSH_SECONDS, self._flush_on_timer)

    def _flush_on_timer(self) -> None:
        self._flush_timer_set = False
        self._flush_events()

    def shutdown(self) -> None:
        self._flush_events()
        super().shutdown()

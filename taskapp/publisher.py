"""The broker side of the service: publish a job's message, stop a running job."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Sequence
from functools import cached_property
from typing import Any, Protocol

import kombu.exceptions
import redis.exceptions
from celery import Celery
from celery.events import Event, EventDispatcher
from celery.utils.nodenames import anon_nodename
from celery.utils.time import utcoffset
from kombu.messaging import Producer

from taskapp.errors import BrokerUnavailable
from taskapp.jobs import Job, hard_time_limit
from taskapp.routing import DEAD_LETTER_QUEUE, job_id_of, queue_for, task_id_for, task_name
from taskapp.start_latency import SENT_AT_HEADER

log = logging.getLogger(__name__)

#: What a lost broker looks like from kombu and redis-py.
_BROKER_ERRORS = (
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    OSError,
)


#: How far past the messages being moved `_move_to_front` looks for them, for messages others pushed meanwhile.
FRONT_WINDOW_SLACK = 100
#: KEYS[1]: a queue; ARGV[1]: how many messages from its head to look at; ARGV[2...]: task ids. Each message of
#: those ids found there is moved to the tail, where a worker takes it next; the oldest pushed ends last, first
#: in line. Returns how many were moved.
_MOVE_TO_FRONT = """
local window = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local wanted = {}
for i = 2, #ARGV do wanted[ARGV[i]] = true end
local moved = 0
for _, raw in ipairs(window) do
    local ok, message = pcall(cjson.decode, raw)
    if ok and type(message) == 'table' and type(message.headers) == 'table' and wanted[message.headers.id] then
        wanted[message.headers.id] = nil
        redis.call('LREM', KEYS[1], 1, raw)
        redis.call('RPUSH', KEYS[1], raw)
        moved = moved + 1
    end
end
return moved
"""


class Publisher(Protocol):
    def publish(self, job: Job, countdown: float | None = None) -> None:
        """Send the job's message to its priority queue, for its next run; raise `BrokerUnavailable` if the
        broker is down."""
        ...

    def publish_many(self, jobs: Sequence[Job], *, at_front: bool = False) -> None:
        """`publish` for a batch, over one broker connection. `at_front`: ahead of the messages already
        waiting in their queues (a due retry keeps its place in line)."""
        ...

    def dead_letter(self, job: Job, error: str) -> None:
        """Park the job's message in the `dead_letter` queue, which no worker consumes, for RetryJob."""
        ...

    def terminate(self, task_id: str) -> None:
        """Ask the workers to stop the run with this Celery task id (best effort: SQL already says CANCELLED,
        and the run's worker notices it when it next renews the run's lease)."""
        ...

    def remove_dead_letters(self, job_ids: Collection[str]) -> None:
        """Take these jobs' messages out of the dead-letter queue (they are run again, or deleted)."""
        ...


class CeleryPublisher:
    """Publishes by task name with `send_task`: the gateway never imports handler code."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def publish(self, job: Job, countdown: float | None = None) -> None:
        try:
            self.app.send_task(
                task_name(job.type),
                task_id=task_id_for(job),
                queue=queue_for(job.priority),
                # The worker reads the payload from SQL at claim time: messages carry no user data.
                kwargs={},
                soft_time_limit=job.timeout_seconds,
                time_limit=hard_time_limit(job.timeout_seconds),
                countdown=countdown,
                headers={SENT_AT_HEADER: time.time()},
            )
        except _BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"broker unavailable: {exc}") from exc

    @cached_property
    def _events(self) -> EventDispatcher:
        """What `send_task` sends its task-sent events through (a dispatcher used only for its settings)."""
        return self.app.events.Dispatcher(enabled=False)

    def publish_many(self, jobs: Sequence[Job], *, at_front: bool = False) -> None:
        """All the messages, and one message of their task-sent events, in one Redis pipeline through kombu's
        publish batch. If the pipeline fails, some may have gone out: the caller discards the jobs, and a
        message for a job that does not exist is dropped by the worker that receives it."""
        if not jobs:
            return
        amqp = self.app.amqp
        sent_events = SentEvents(self._events) if self.app.conf.task_send_sent_event else None
        # The node name Celery puts in every message's `origin`: looked up once per batch, not per message.
        origin = anon_nodename()
        try:
            with self.app.producer_or_acquire() as producer, producer.batch():
                # Each queue is declared once per batch rather than once per message (kombu binds a copy of
                # the queue to check its cache every time it is asked).
                for name in {queue_for(job.priority) for job in jobs}:
                    producer.maybe_declare(amqp.queues[name])
                for job in jobs:
                    # The two steps of `send_task`, without its per-call routing, options merging and result
                    # set-up: half the CPU per message. The message is the one `publish` sends (a test holds
                    # them equal).
                    message = amqp.create_task_message(
                        task_id_for(job),
                        task_name(job.type),
                        (),
                        {},
                        reply_to=self.app.thread_oid,
                        soft_time_limit=job.timeout_seconds,
                        time_limit=hard_time_limit(job.timeout_seconds),
                        create_sent_event=sent_events is not None,
                        ignore_result=None,
                        # What Celery would render for these arguments, without rendering them each time.
                        argsrepr="()",
                        kwargsrepr="{}",
                        origin=origin,
                    )
                    message.headers[SENT_AT_HEADER] = time.time()
                    amqp.send_task_message(
                        producer,
                        task_name(job.type),
                        message,
                        queue=queue_for(job.priority),
                        declare=[],
                        event_dispatcher=sent_events,
                        # A message joins the batch's pipeline here; only the batch's flush meets Redis, so
                        # there is nothing for kombu's retry wrapper around each publish to retry.
                        retry=False,
                    )
                if sent_events is not None:
                    sent_events.send(producer)
            if at_front:
                self._move_to_front(jobs)
        except (*_BROKER_ERRORS, kombu.exceptions.BatchPublishError) as exc:
            raise BrokerUnavailable(f"broker unavailable: {exc}") from exc

    def _move_to_front(self, jobs: Sequence[Job]) -> None:
        """Move the messages just published for `jobs` from the back of their queues to the front. kombu's Redis
        transport pushes new messages at the head of a list and workers pop from its tail; this does what kombu
        itself does when it restores an unacknowledged message (a push at the tail), atomically per queue."""
        by_queue: dict[str, list[str]] = {}
        for job in jobs:
            by_queue.setdefault(queue_for(job.priority), []).append(task_id_for(job))
        with self.app.connection_for_write() as connection:
            client = connection.default_channel.client
            for queue, task_ids in by_queue.items():
                # Where LPUSH put them, give or take what others pushed meanwhile.
                window = len(task_ids) + FRONT_WINDOW_SLACK
                client.eval(_MOVE_TO_FRONT, 1, queue, window, *task_ids)

    def dead_letter(self, job: Job, error: str) -> None:
        self.app.send_task(
            task_name(job.type),
            task_id=job.task_id or job.job_id,
            kwargs={},
            queue=DEAD_LETTER_QUEUE,
            headers={"x-taskapp-origin-queue": queue_for(job.priority), "x-taskapp-error": error[:1_000]},
        )

    def remove_dead_letters(self, job_ids: Collection[str]) -> None:
        """One pass over the dead-letter queue, removing the messages of these jobs in one round trip: each
        removal stops at the first copy of its message (one per copy read), near the list's head when many go."""
        try:
            with self.app.connection_for_write() as connection:
                client = connection.default_channel.client
                removals = client.pipeline(transaction=False)
                for raw in client.lrange(DEAD_LETTER_QUEUE, 0, -1):
                    if job_id_of(json.loads(raw).get("headers", {}).get("id", "")) in job_ids:
                        removals.lrem(DEAD_LETTER_QUEUE, 1, raw)
                removals.execute()
        except _BROKER_ERRORS as exc:
            log.warning("could not remove %d job(s) from the dead-letter queue: %s", len(job_ids), exc)

    def terminate(self, task_id: str) -> None:
        try:
            self.app.control.revoke(task_id, terminate=True, signal="SIGKILL")
        except _BROKER_ERRORS as exc:
            # The job is CANCELLED in SQL already; its run's outcome will not be recorded over that.
            log.warning("could not broadcast termination of run %s: %s", task_id, exc)


class SentEvents:
    """Takes the place of Celery's event dispatcher in `send_task_message` for a batch: keeps each task-sent
    event (as the dispatcher would make it), then sends them as one message. That is the grouped form Celery's
    own workers send their task events in (a list, routing key `task.multi`), which every event receiver reads
    (Flower, the exporter, `celery events`): one message instead of one per job, which took the gateway's CPU
    per job in SubmitJobs of 100 from about 420 to 250 µs."""

    def __init__(self, dispatcher: EventDispatcher) -> None:
        self.dispatcher = dispatcher
        self.events: list[dict[str, Any]] = []

    def publish(self, type: str, fields: dict[str, Any], producer: Producer, **_: Any) -> None:
        dispatcher = self.dispatcher
        self.events.append(
            Event(
                type,
                hostname=dispatcher.hostname,
                utcoffset=utcoffset(),
                pid=dispatcher.pid,
                clock=dispatcher.clock.forward(),
                **fields,
            )
        )

    def send(self, producer: Producer) -> None:
        if not self.events:
            return
        dispatcher = self.dispatcher
        producer.publish(  # type: ignore[no-untyped-call]
            self.events,
            routing_key="task.multi",
            exchange=dispatcher.exchange.name,
            declare=[dispatcher.exchange],
            serializer=dispatcher.serializer,
            headers=dispatcher.headers,
            delivery_mode=dispatcher.delivery_mode,
        )

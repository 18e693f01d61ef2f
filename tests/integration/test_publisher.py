"""CeleryPublisher against a real Redis: a batch publishes the very messages `send_task` would, in one pipeline."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import redis
from celery import Celery

from taskapp.jobs import Job, JobState, Priority
from taskapp.publisher import CeleryPublisher
from taskapp.start_latency import SENT_AT_HEADER
from tests.helpers import wait_for


def job(job_id: str, priority: Priority = Priority.DEFAULT, type: str = "echo") -> Job:
    now = datetime.now(UTC)
    return Job(
        job_id=job_id,
        type=type,
        priority=priority,
        state=JobState.QUEUED,
        payload={"secret": "not in the message"},
        result=None,
        attempts=0,
        max_attempts=3,
        last_error="",
        timeout_seconds=120,
        created_at=now,
        updated_at=now,
        scheduled_at=now,
        started_at=None,
        finished_at=None,
        worker="",
        seq=1,
        fingerprint="f",
    )


def celery_app(redis_url: str) -> Celery:
    app = Celery("publisher-test")
    app.config_from_object("celeryconfig")
    app.conf.broker_url = redis_url
    return app


def popped(client: redis.Redis, queue: str) -> dict:
    raw = client.rpop(queue)
    assert isinstance(raw, bytes), f"no message in {queue}"
    message = json.loads(raw)
    del message["properties"]["delivery_tag"]  # unique per message, by design
    sent_at = message["headers"].pop(SENT_AT_HEADER)  # when it was sent: differs by design
    assert abs(sent_at - time.time()) < 60
    return message


def test_a_batch_sends_what_send_task_sends(redis_url: str) -> None:
    publisher = CeleryPublisher(celery_app(redis_url))
    client = redis.Redis.from_url(redis_url)
    for priority in (Priority.DEFAULT, Priority.CRITICAL):
        one = job("same-job", priority)
        publisher.publish(one)
        singly = popped(client, priority.value)
        publisher.publish_many([one])
        batched = popped(client, priority.value)
        assert batched == singly
        assert batched["headers"]["task"] == "handlers.echo" and batched["headers"]["id"] == "same-job@1"
        assert "not in the message" not in json.dumps(batched)


def test_a_batch_reaches_every_queue_it_names(redis_url: str) -> None:
    publisher = CeleryPublisher(celery_app(redis_url))
    client = redis.Redis.from_url(redis_url)
    jobs = [job(f"j{n}", priority) for n, priority in enumerate([*Priority, Priority.LOW, Priority.LOW])]
    publisher.publish_many(jobs)
    depths = {priority.value: client.llen(priority.value) for priority in Priority}
    assert depths == {"critical": 1, "high": 1, "default": 1, "low": 3}


class EventWatcher:
    """Celery's own event receiver (what Flower and the exporter use) on a thread, keeping what it hears."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.heard: list[dict] = []
        self._connection = app.connection_for_read()
        self._receiver = app.events.Receiver(self._connection, handlers={"*": self.heard.append})
        self._thread = threading.Thread(target=self._receiver.capture, kwargs={"wakeup": False}, daemon=True)

    def __enter__(self) -> EventWatcher:
        self._thread.start()
        # Subscribed once it hears an event sent after it started.
        with self.app.events.default_dispatcher() as dispatcher:

            def probe_heard() -> bool:
                dispatcher.send("probe-heard")
                return any(event["type"] == "probe-heard" for event in self.heard)

            wait_for(probe_heard, 10, "the event receiver to hear a probe")
        return self

    def __exit__(self, *_: object) -> None:
        self._receiver.should_stop = True
        self._thread.join(5)
        self._connection.release()

    def sent(self, task_id: str, count: int = 1) -> list[dict]:
        """The task-sent events of the job, once `count` have been heard."""

        def heard() -> list[dict]:
            events = [e for e in self.heard if e["type"] == "task-sent" and e["uuid"] == task_id]
            return events if len(events) >= count else []

        return wait_for(heard, 10, f"{count} task-sent event(s) of {task_id}", interval=0.02)


#: Fields that differ between any two events: when, and the sender's logical clock.
VOLATILE = {"timestamp", "clock", "local_received"}


def test_a_batch_sends_the_task_sent_events_send_task_sends(redis_url: str) -> None:
    app = celery_app(redis_url)
    publisher = CeleryPublisher(app)
    jobs = [job(f"j{n}", priority) for n, priority in enumerate(Priority)]
    with EventWatcher(app) as watcher:
        publisher.publish(jobs[0])
        publisher.publish_many(jobs)
        singly, batched = watcher.sent("j0@1", count=2)
        assert {k: v for k, v in batched.items() if k not in VOLATILE} == {
            k: v for k, v in singly.items() if k not in VOLATILE
        }
        assert batched["queue"] == jobs[0].priority.value and batched["name"] == "handlers.echo"
        for one in jobs[1:]:
            (event,) = watcher.sent(f"{one.job_id}@1")
            assert event["queue"] == one.priority.value

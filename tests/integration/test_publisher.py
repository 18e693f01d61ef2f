"""CeleryPublisher against a real Redis: a batch publishes the very messages `send_task` would, in one pipeline."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import redis
from celery import Celery

from taskapp.jobs import Job, JobState, Priority
from taskapp.publisher import CeleryPublisher


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
    assert raw is not None, f"no message in {queue}"
    message = json.loads(raw)
    del message["properties"]["delivery_tag"]  # unique per message, by design
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
        assert batched["headers"]["task"] == "handlers.echo" and batched["headers"]["id"] == "same-job"
        assert "not in the message" not in json.dumps(batched)


def test_a_batch_reaches_every_queue_it_names(redis_url: str) -> None:
    publisher = CeleryPublisher(celery_app(redis_url))
    client = redis.Redis.from_url(redis_url)
    jobs = [job(f"j{n}", priority) for n, priority in enumerate([*Priority, Priority.LOW, Priority.LOW])]
    publisher.publish_many(jobs)
    depths = {priority.value: client.llen(priority.value) for priority in Priority}
    assert depths == {"critical": 1, "high": 1, "default": 1, "low": 3}

"""The worker's task events (`taskapp.worker_events`), heard on Redis as Flower and the exporter hear them: a
burst of jobs' events leaves in a few grouped messages, every event of every job arrives, a lone job's events
arrive soon (not when a buffer fills), and a job that ends as its worker stops has its events sent."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from grpc_gateway.v1 import jobs_pb2
from tests.helpers import Stack, get, submit, wait_for

MakeStack = Callable[..., Stack]

#: The three events a worker sends of each job's run.
RUN_EVENTS = {"task-received", "task-started", "task-succeeded"}


class TaskEvents:
    """The worker's task events as they cross Redis: each message (a PUBSUB message on the events exchange) and
    the events it carries (one, or a grouped list)."""

    def __init__(self, redis_url: str) -> None:
        # Kept: a client that goes closes its connection pool, and the subscription's connection with it.
        self._client = redis.Redis.from_url(redis_url)
        db = self._client.connection_pool.connection_kwargs.get("db", 0)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        # kombu's fanout channels on Redis: "/<db>.<exchange>/<routing key>"; task events are "task.*".
        self._pubsub.psubscribe(f"/{db}.celeryev/task.*")
        self.messages: list[list[dict[str, Any]]] = []

    def read(self) -> None:
        while (message := self._pubsub.get_message(timeout=0.01)) is not None:
            envelope = json.loads(message["data"])
            body = json.loads(base64.b64decode(envelope["body"]))
            self.messages.append(body if isinstance(body, list) else [body])

    def of(self, task_ids: set[str]) -> list[dict[str, Any]]:
        """The run events of these tasks heard so far (the gateway's task-sent events travel here too)."""
        self.read()
        return [event for events in self.messages for event in events if self.is_run_event(event, task_ids)]

    def wait_for_runs(self, task_ids: set[str]) -> list[dict[str, Any]]:
        """The three run events of each task, once all have been heard."""
        expected = len(RUN_EVENTS) * len(task_ids)
        return wait_for(
            lambda: heard if len(heard := self.of(task_ids)) >= expected else None,
            10,
            f"the {expected} run events of {len(task_ids)} task(s)",
        )

    @staticmethod
    def is_run_event(event: dict[str, Any], task_ids: set[str]) -> bool:
        return event.get("uuid") in task_ids and event["type"] in RUN_EVENTS

    def close(self) -> None:
        self._pubsub.close()
        self._client.close()


@contextmanager
def task_events(stack: Stack) -> Iterator[TaskEvents]:
    events = TaskEvents(stack.env["REDIS_URL"])
    try:
        yield events
    finally:
        events.close()


def run_ids(stack: Stack, job_ids: list[str]) -> set[str]:
    """Each job's Celery task id (`<job id>@<run>`), once every job has SUCCEEDED."""
    for job_id in job_ids:
        assert stack.wait_terminal(job_id).state == jobs_pb2.JOB_STATE_SUCCEEDED
    return {f"{job_id}@1" for job_id in job_ids}


def test_a_burst_s_task_events_leave_grouped_and_every_one_arrives(make_stack: MakeStack) -> None:
    stack = make_stack()
    with task_events(stack) as events:
        reply = stack.stub().SubmitJobs(
            jobs_pb2.SubmitJobsRequest(jobs=[jobs_pb2.SubmitJobRequest(type="noop") for _ in range(60)]),
            timeout=30,
        )
        task_ids = run_ids(stack, [result.job_id for result in reply.results])
        heard = events.wait_for_runs(task_ids)
        assert {(event["uuid"], event["type"]) for event in heard} == {
            (task_id, type) for task_id in task_ids for type in RUN_EVENTS
        }
        carrying = [m for m in events.messages if any(events.is_run_event(e, task_ids) for e in m)]
        # Flushed at every turn of the event loop, as stock Celery does, nearly every event is a message of its own.
        assert len(carrying) <= len(heard) / 5, f"{len(heard)} events in {len(carrying)} messages"


def test_a_lone_job_s_task_events_arrive_within_a_second(make_stack: MakeStack) -> None:
    stack = make_stack()
    with task_events(stack) as events:
        task_ids = run_ids(stack, [submit(stack, "noop")])
        finished = time.monotonic()
        heard = events.wait_for_runs(task_ids)
        assert time.monotonic() - finished < 1.0
        assert {event["type"] for event in heard} == RUN_EVENTS


def test_a_job_that_ends_as_its_worker_stops_has_its_events_sent(make_stack: MakeStack) -> None:
    stack = make_stack(TASKAPP_WORKER_SHUTDOWN_TIMEOUT="30")
    with task_events(stack) as events:
        job_id = submit(stack, "sleep", {"seconds": 1})
        wait_for(lambda: get(stack, job_id).state == jobs_pb2.JOB_STATE_RUNNING, 10, "the run", interval=0.02)
        worker = stack.processes.pop("worker")
        os.killpg(worker.pid, signal.SIGTERM)  # as honcho stops it: the whole process group
        assert worker.wait(30) == 0
        assert get(stack, job_id).state == jobs_pb2.JOB_STATE_SUCCEEDED
        heard = events.wait_for_runs({f"{job_id}@1"})
        assert {event["type"] for event in heard} == RUN_EVENTS

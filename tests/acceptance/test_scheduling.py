"""Scheduling and delivery: scheduled jobs, the outbox, two schedulers with one active, reconcile after Redis
lost its data, and retention — real gateway, worker, scheduler, Redis and PostgreSQL."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import redis
import sqlalchemy as sa

from grpc_gateway.v1 import jobs_pb2
from taskapp.faults import AFTER_COMMIT_BEFORE_PUBLISH
from taskapp.routing import job_id_of
from taskapp.store.engine import create_db_engine
from taskapp.store.tables import events_table, jobs_table
from tests.helpers import BIN, Stack, get, sql_count, submit, submit_at, wait_dead_letters, wait_for

MakeStack = Callable[..., Stack]


def broker(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.env["REDIS_URL"])


def queued_ids(stack: Stack, queue: str = "default") -> list[str]:
    """Job ids of the messages waiting in a queue, duplicates included."""
    return [job_id_of(json.loads(raw)["headers"]["id"]) for raw in broker(stack).lrange(queue, 0, -1)]


def broker_mentions(stack: Stack, text: str) -> bool:
    """Whether any key or value in the stack's Redis database contains `text`."""
    client = broker(stack)
    needle = text.encode()
    for key in client.scan_iter():
        kind = client.type(key)
        values: list[Any]
        if kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind == b"hash":
            values = [*client.hkeys(key), *client.hvals(key)]
        elif kind == b"set":
            values = list(client.smembers(key))
        elif kind == b"zset":
            values = client.zrange(key, 0, -1)
        elif kind == b"string":
            values = [client.get(key) or b""]
        else:
            values = []
        if any(needle in value for value in [key, *values]):
            return True
    return False


def sql(stack: Stack, statement: sa.Executable) -> None:
    engine = create_db_engine(stack.env["DATABASE_URL"])
    try:
        with engine.begin() as conn:
            conn.execute(statement)
    finally:
        engine.dispose()


def running_events(stack: Stack) -> dict[str, int]:
    engine = create_db_engine(stack.env["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(events_table.c.job_id, sa.func.count())
                .where(events_table.c.state == "RUNNING")
                .group_by(events_table.c.job_id)
            )
            return {row[0]: row[1] for row in rows}
    finally:
        engine.dispose()


def test_a_job_due_in_3_s_starts_between_3_and_4_s_after_submit(make_stack: MakeStack) -> None:
    stack = make_stack()
    submitted = datetime.now(UTC)
    job_id = submit_at(stack, "noop", submitted + timedelta(seconds=3))
    assert get(stack, job_id).state == jobs_pb2.JOB_STATE_SCHEDULED
    assert not broker_mentions(stack, job_id), "a scheduled job waits in SQL, not in the broker"

    job = stack.wait_terminal(job_id, timeout=20)

    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    waited = job.started_at.ToDatetime(tzinfo=UTC) - submitted
    assert timedelta(seconds=3) <= waited <= timedelta(seconds=4), waited


def test_a_job_300_days_ahead_stays_in_sql_and_can_be_cancelled(make_stack: MakeStack) -> None:
    stack = make_stack()
    far_id = submit_at(stack, "noop", datetime.now(UTC) + timedelta(days=300))
    # A job due at once, submitted after the far one: once it has run, the scheduler has looked at both.
    near_id = submit_at(stack, "noop", datetime.now(UTC) + timedelta(milliseconds=500))
    assert stack.wait_terminal(near_id).state == jobs_pb2.JOB_STATE_SUCCEEDED

    far = get(stack, far_id)
    assert far.state == jobs_pb2.JOB_STATE_SCHEDULED
    assert far.scheduled_at.ToDatetime(tzinfo=UTC) > datetime.now(UTC) + timedelta(days=299)
    assert not broker_mentions(stack, far_id)

    reply = stack.stub().CancelJob(jobs_pb2.CancelJobRequest(job_id=far_id), timeout=10)
    assert reply.cancelled and reply.state == jobs_pb2.JOB_STATE_CANCELLED
    assert get(stack, far_id).state == jobs_pb2.JOB_STATE_CANCELLED


def test_run_at_more_than_365_days_ahead_is_refused(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False)
    with pytest.raises(grpc.RpcError) as raised:
        submit_at(stack, "noop", datetime.now(UTC) + timedelta(days=366), job_id="too-far")
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("run_at")
    assert sql_count(stack, jobs_table) == 0


def test_a_gateway_killed_between_commit_and_publish_loses_no_job(make_stack: MakeStack) -> None:
    stack = make_stack()
    stack.stop("gateway")
    stack.start_gateway(TASKAPP_FAULT=AFTER_COMMIT_BEFORE_PUBLISH)

    with pytest.raises(grpc.RpcError) as raised:
        submit(stack, "echo", {"n": 1}, job_id="committed-not-published")
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    assert stack.processes["gateway"].wait(10) == -signal.SIGKILL
    assert sql_count(stack, jobs_table, jobs_table.c.job_id == "committed-not-published") == 1

    stack.processes.pop("gateway")
    stack.start_gateway()
    job = stack.wait_terminal("committed-not-published", timeout=30)
    assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_SUCCEEDED, 1)
    assert running_events(stack) == {"committed-not-published": 1}, "it ran once"
    assert "whose message was never sent" in stack.log("scheduler")


def lease_holder_pid(stack: Stack) -> int | None:
    holder = broker(stack).get("taskapp:scheduler")
    return int(holder.split(b":")[1]) if isinstance(holder, bytes) else None


def test_two_schedulers_publish_each_due_job_once_and_a_standby_takes_over(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False, scheduler=False)
    stack.start_scheduler("scheduler-a")
    stack.start_scheduler("scheduler-b")
    pids = {stack.processes[name].pid: name for name in ("scheduler-a", "scheduler-b")}
    wait_for(lambda: lease_holder_pid(stack) in pids, 10, "one scheduler to hold the lease")

    first = [submit_at(stack, "noop", datetime.now(UTC) + timedelta(seconds=1)) for _ in range(20)]
    wait_for(lambda: sorted(queued_ids(stack)) == sorted(first), 10, "the 20 due jobs in the broker")

    active = pids[lease_holder_pid(stack)]  # type: ignore[index]
    standby = next(name for name in pids.values() if name != active)
    stack.kill(active)
    killed_at = time.monotonic()
    second = [submit_at(stack, "noop", datetime.now(UTC)) for _ in range(5)]
    wait_for(lambda: pids.get(lease_holder_pid(stack)) == standby, 5, "the standby to take the lease")  # type: ignore[arg-type]
    wait_for(lambda: len(queued_ids(stack)) == 25, 5.5 - (time.monotonic() - killed_at), "the later jobs")
    took_over = time.monotonic() - killed_at

    assert took_over < 5, took_over
    assert sorted(queued_ids(stack)) == sorted(first + second), "each due job published exactly once"
    # The lease is visible in Redis a moment before the new holder logs that it took it.
    wait_for(lambda: "is active" in stack.log(standby), 2, "the standby to log that it is active")


def test_reconcile_republishes_what_a_flushed_redis_lost(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False, scheduler=False)  # no scheduler to heal it first: the command does
    ids = [submit(stack, "noop") for _ in range(100)]
    assert sorted(queued_ids(stack)) == sorted(ids)
    broker(stack).flushdb()

    def reconcile() -> str:
        done = subprocess.run(
            [str(BIN / "taskapp"), "reconcile"], env=stack.env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "100 job(s) published again" in reconcile()
    assert sorted(queued_ids(stack)) == sorted(ids)
    assert "0 job(s) published again" in reconcile(), "what the broker holds is not published twice"

    stack.start_worker()
    wait_for(
        lambda: sql_count(stack, jobs_table, jobs_table.c.state == "SUCCEEDED") == 100,
        60,
        "all 100 to succeed",
    )
    assert running_events(stack) == dict.fromkeys(ids, 1), "each handler ran once"


def test_retention_deletes_old_finished_jobs_with_their_events(make_stack: MakeStack) -> None:
    stack = make_stack(scheduler=False)
    old_ok = submit(stack, "echo", {"n": 1})
    old_dead = submit(stack, "fail", {"times": 5}, max_attempts=1)
    recent = submit(stack, "echo", {"n": 2})
    for job_id in (old_ok, old_dead, recent):
        stack.wait_terminal(job_id)
    wait_dead_letters(stack, 1)
    waiting = submit_at(stack, "noop", datetime.now(UTC) + timedelta(days=30))
    eight_days_ago = datetime.now(UTC) - timedelta(days=8)
    aged = {"created_at": eight_days_ago, "updated_at": eight_days_ago}
    sql(stack, jobs_table.update().where(jobs_table.c.job_id == waiting).values(**aged))
    sql(
        stack,
        jobs_table.update()
        .where(jobs_table.c.job_id.in_([old_ok, old_dead]))
        .values(**aged, finished_at=eight_days_ago),
    )
    stack.start_scheduler()  # retention: the default 7 days

    def gone(job_id: str) -> bool:
        try:
            get(stack, job_id)
        except grpc.RpcError as error:
            return error.code() is grpc.StatusCode.NOT_FOUND
        return False

    wait_for(lambda: gone(old_ok) and gone(old_dead), 10, "the old finished jobs to be deleted")
    for job_id in (old_ok, old_dead):
        assert sql_count(stack, events_table, events_table.c.job_id == job_id) == 0
    wait_dead_letters(stack, 0)
    assert get(stack, recent).state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert sql_count(stack, events_table, events_table.c.job_id == recent) == 3
    assert get(stack, waiting).state == jobs_pb2.JOB_STATE_SCHEDULED

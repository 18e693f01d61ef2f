"""Outages: PostgreSQL or Redis going away makes SubmitJob answer UNAVAILABLE with nothing
half-created, and both are used again once they are back, with no restart of our processes.

Each test stops and starts a server of its own (a throwaway PostgreSQL cluster, a private redis-server), never
the shared ones.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.servers import OwnPostgres, OwnRedis
from grpc_gateway.v1 import jobs_pb2
from taskapp.migrate import upgrade
from taskapp.store.tables import jobs_table
from tests.helpers import Stack, sql_count, submit, wait_for

MakeStack = Callable[..., Stack]


def submit_refused(stack: Stack, job_id: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        submit(stack, "echo", {"n": 1}, job_id=job_id)
    return raised.value


def test_postgres_down_then_back_without_restarting_the_gateway(
    make_stack: MakeStack, own_postgres: OwnPostgres
) -> None:
    upgrade(own_postgres.url)
    stack = make_stack(DATABASE_URL=own_postgres.url)
    assert stack.wait_terminal(submit(stack, "echo", {"n": 0})).state == jobs_pb2.JOB_STATE_SUCCEEDED

    own_postgres.stop()
    error = submit_refused(stack, "during-outage")
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert "database" in error.details()

    own_postgres.start()
    assert sql_count(stack, jobs_table, jobs_table.c.job_id == "during-outage") == 0, "nothing half-created"
    job_id = submit(stack, "echo", {"n": 1}, job_id="during-outage")
    assert stack.wait_terminal(job_id).state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert stack.processes["gateway"].poll() is None


def test_redis_down_then_back_without_restarting_the_gateway(
    make_stack: MakeStack, own_redis: OwnRedis
) -> None:
    stack = make_stack(REDIS_URL=own_redis.url)
    assert stack.wait_terminal(submit(stack, "echo", {"n": 0})).state == jobs_pb2.JOB_STATE_SUCCEEDED

    own_redis.stop()
    error = submit_refused(stack, "during-outage")
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert "broker" in error.details()
    assert sql_count(stack, jobs_table, jobs_table.c.job_id == "during-outage") == 0, "nothing half-created"

    own_redis.start()
    job_id = submit(stack, "echo", {"n": 1}, job_id="during-outage")
    assert stack.wait_terminal(job_id, timeout=60).state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert stack.processes["gateway"].poll() is None


def health(stack: Stack) -> int:
    reply = health_pb2_grpc.HealthStub(grpc.insecure_channel(stack.address)).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return int(reply.status)


def readyz(stack: Stack) -> tuple[int, dict[str, str]]:
    reply = httpx.get(f"http://{stack.env['TASKAPP_METRICS_ADDR']}/readyz", timeout=10)
    return reply.status_code, reply.json()


def test_readyz_and_grpc_health_follow_postgres_and_redis(
    make_stack: MakeStack, own_postgres: OwnPostgres, own_redis: OwnRedis
) -> None:
    upgrade(own_postgres.url)
    stack = make_stack(worker=False, DATABASE_URL=own_postgres.url, REDIS_URL=own_redis.url)
    metrics = f"http://{stack.env['TASKAPP_METRICS_ADDR']}"
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert readyz(stack) == (200, {"database": "ok", "redis": "ok"})
    assert httpx.get(f"{metrics}/healthz", timeout=10).status_code == 200

    own_postgres.stop()
    status, checks = readyz(stack)
    assert status == 503 and checks["redis"] == "ok" and "database unavailable" in checks["database"]
    wait_for(lambda: health(stack) == not_serving, 10, "gRPC health to say NOT_SERVING")
    assert httpx.get(f"{metrics}/healthz", timeout=10).status_code == 200, "alive all the same"
    own_postgres.start()
    assert readyz(stack)[0] == 200
    wait_for(lambda: health(stack) == serving, 10, "gRPC health to say SERVING again")

    own_redis.stop()
    status, checks = readyz(stack)
    assert status == 503 and checks["database"] == "ok" and "unreachable" in checks["redis"]
    own_redis.start()
    assert readyz(stack)[0] == 200

    submit(stack, "noop")
    scraped = httpx.get(f"{metrics}/metrics", timeout=10).text
    assert 'taskapp_gateway_rpcs_total{code="OK",method="SubmitJob"} 1.0' in scraped
    assert 'taskapp_jobs_submitted_total{priority="default",type="noop"} 1.0' in scraped

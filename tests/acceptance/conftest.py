"""The real processes, started exactly as the Procfile starts them, on isolated Redis/SQL and free ports."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.servers import OwnPostgres, OwnRedis
from tests.helpers import (
    BIN,
    ROOT,
    RedisDatabases,
    Stack,
    free_port,
    make_database_url,
)


@pytest.fixture
def make_stack(
    tmp_path: Path, request: pytest.FixtureRequest, redis_databases: RedisDatabases
) -> Iterator[Callable[..., Stack]]:
    """Builds stacks; `make_stack(backend="postgres", worker=True, concurrency=2, scheduler=True, start=True,
    **env)`; with `start=False` nothing is started. The scheduler runs by default, as in the Procfile: it
    publishes retries when their back-off ends and rescues lost runs.

    All stop at teardown."""
    stacks: list[Stack] = []
    redis_urls: list[str] = []

    def make(
        backend: str = "postgres",
        worker: bool = True,
        concurrency: int = 2,
        scheduler: bool = True,
        start: bool = True,
        **extra_env: str,
    ) -> Stack:
        workdir = tmp_path / f"stack{len(stacks)}"
        workdir.mkdir()
        redis_url = redis_databases.acquire()
        redis_urls.append(redis_url)
        port = free_port()
        env = {
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": os.environ.get("HOME", str(workdir)),
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": make_database_url(backend, workdir, request),
            "REDIS_URL": redis_url,
            "TASKAPP_GRPC_ADDR": f"127.0.0.1:{port}",
            "TASKAPP_METRICS_ADDR": f"127.0.0.1:{free_port()}",
            "TASKAPP_WORKER_METRICS_ADDR": f"127.0.0.1:{free_port()}",
            "TASKAPP_EXPORTER_ADDR": f"127.0.0.1:{free_port()}",
            "TASKAPP_FLOWER_ADDR": f"127.0.0.1:{free_port()}",
            "TASKAPP_FLOWER_DB": str(workdir / "flower.db"),
            "PYTHONPATH": str(ROOT),
            "TASKAPP_HANDLER_MODULES": "tests.handlers_for_tests",
            # Stopping a stack must not wait out long test jobs.
            "TASKAPP_WORKER_SHUTDOWN_TIMEOUT": "2",
            **extra_env,
        }
        stack = Stack(workdir=workdir, env=env, address=f"127.0.0.1:{port}")
        stacks.append(stack)
        if not start:
            return stack
        stack.start_gateway()
        if worker:
            stack.start_worker(concurrency)
        if scheduler:
            stack.start_scheduler()
        return stack

    yield make
    for stack in stacks:
        stack.stop_all()
    for url in redis_urls:
        redis_databases.release(url)


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    cluster = OwnPostgres()
    cluster.start()
    yield cluster
    cluster.remove()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()

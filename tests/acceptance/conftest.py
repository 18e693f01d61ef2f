"""The real processes, started exactly as the Procfile starts them, on isolated Redis/SQL and free ports."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from bench.servers import OwnPostgres, OwnRedis
from tests.helpers import (
    BIN,
    ROOT,
    RedisDatabases,
    Stack,
    free_port,
    make_database_url,
)


class StackFactory:
    """Builds stacks; `factory(backend="postgres", worker=True, concurrency=2, scheduler=True, start=True,
    **env)`; with `start=False` nothing is started. The scheduler runs by default, as in the Procfile: it
    publishes retries when their back-off ends and rescues lost runs. `close()` stops them all."""

    def __init__(self, root: Path, request: pytest.FixtureRequest, redis_databases: RedisDatabases) -> None:
        self.root = root
        self.request = request
        self.redis_databases = redis_databases
        self.stacks: list[Stack] = []
        self.redis_urls: list[str] = []

    def __call__(
        self,
        backend: str = "postgres",
        worker: bool = True,
        concurrency: int = 2,
        scheduler: bool = True,
        start: bool = True,
        **extra_env: str,
    ) -> Stack:
        workdir = self.root / f"stack{len(self.stacks)}"
        workdir.mkdir()
        redis_url = self.redis_databases.acquire()
        self.redis_urls.append(redis_url)
        port = free_port()
        env = {
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": os.environ.get("HOME", str(workdir)),
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": make_database_url(backend, workdir, self.request),
            "REDIS_URL": redis_url,
            "TASKAPP_GRPC_ADDR": f"127.0.0.1:{port}",
            "TASKAPP_METRICS_ADDR": f"127.0.0.1:{free_port()}",
            "TASKAPP_HTTP_ADDR": f"127.0.0.1:{free_port()}",
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
        self.stacks.append(stack)
        if not start:
            return stack
        stack.start_gateway()
        if worker:
            stack.start_worker(concurrency)
        if scheduler:
            stack.start_scheduler()
        return stack

    def close(self) -> None:
        for stack in self.stacks:
            stack.kill_all()
        for url in self.redis_urls:
            self.redis_databases.release(url)


@pytest.fixture
def make_stack(
    tmp_path: Path, request: pytest.FixtureRequest, redis_databases: RedisDatabases
) -> Iterator[StackFactory]:
    """Stacks of one test's own (`StackFactory`), stopped at its end."""
    factory = StackFactory(tmp_path, request, redis_databases)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def make_module_stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, redis_databases: RedisDatabases
) -> Iterator[StackFactory]:
    """Stacks shared by a module's tests, stopped after its last: for tests that change nothing another of
    them looks at (each stack costs seconds of CPU to start, on the cores the whole run shares)."""
    factory = StackFactory(tmp_path_factory.mktemp("module-stacks"), request, redis_databases)
    yield factory
    factory.close()


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


#: As root and on a closed network, Chromium needs these (the machine's notes: /work/.library/env).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, driven by Playwright (which downloads no browser of its own), for a module's tests."""
    chromium = shutil.which("chromium")
    assert chromium, "Chromium is missing: install Debian's `chromium` package (.ci/run does)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()

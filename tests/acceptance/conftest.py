"""The real processes, started exactly as the Procfile starts them, on isolated Redis/SQL and free ports."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_gateway.v1 import jobs_pb2, jobs_pb2_grpc
from tests.conftest import RedisDatabases, make_database_url, wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TERMINAL = {
    jobs_pb2.JOB_STATE_SUCCEEDED,
    jobs_pb2.JOB_STATE_FAILED,
    jobs_pb2.JOB_STATE_DEAD_LETTER,
    jobs_pb2.JOB_STATE_CANCELLED,
}


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if line.strip() and not line.startswith("#"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """A gateway and (optionally) a worker on their own Redis database, SQL database and port."""

    workdir: Path
    env: dict[str, str]
    address: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, line: str | None = None, **extra_env: str) -> None:
        """Start Procfile line `line` (default: `name`) as process `name`."""
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        self.processes[name] = subprocess.Popen(
            shlex.split(procfile()[line or name]),
            cwd=self.workdir,
            env={**self.env, **extra_env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_gateway(self, **extra_env: str) -> None:
        self.start("gateway", **extra_env)
        channel = grpc.insecure_channel(self.address)
        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            except grpc.RpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        try:
            wait_for(serving, 30, "the gateway to serve")
        finally:
            channel.close()

    def start_worker(self, concurrency: int = 2) -> None:
        self.start("worker", TASKAPP_WORKER_CONCURRENCY=str(concurrency))
        wait_for(lambda: " ready." in self.log("worker"), 60, "the worker to be ready")

    def start_scheduler(self, name: str = "scheduler", **extra_env: str) -> None:
        self.start(name, "scheduler", **extra_env)
        wait_for(lambda: "starting" in self.log(name), 30, f"{name} to start")

    def stop(self, name: str, timeout: float = 20) -> None:
        process = self.processes.pop(name, None)
        if process is None:
            return
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)

    def kill(self, name: str) -> None:
        """SIGKILL a process and all its children, as a machine losing power would."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def pool_children(self) -> list[int]:
        """Pids of the worker's pool processes."""
        pid = self.processes["worker"].pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(child) for child in children]

    def stub(self) -> jobs_pb2_grpc.JobServiceStub:
        return jobs_pb2_grpc.JobServiceStub(grpc.insecure_channel(self.address))

    def grpcurl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "grpcurl"), "-plaintext", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=check,
        )

    def wait_terminal(self, job_id: str, timeout: float = 30) -> jobs_pb2.Job:
        stub = self.stub()

        def finished() -> jobs_pb2.Job | None:
            job = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=5)
            return job if job.state in TERMINAL else None

        return wait_for(finished, timeout, f"job {job_id} to finish")  # type: ignore[return-value]


@pytest.fixture
def make_stack(
    tmp_path: Path, request: pytest.FixtureRequest, redis_databases: RedisDatabases
) -> Iterator[Callable[..., Stack]]:
    """Builds stacks; `make_stack(backend="postgres", worker=True, concurrency=2, scheduler=False, start=True,
    **env)`; with `start=False` nothing is started.

    All stop at teardown."""
    stacks: list[Stack] = []
    redis_urls: list[str] = []

    def make(
        backend: str = "postgres",
        worker: bool = True,
        concurrency: int = 2,
        scheduler: bool = False,
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

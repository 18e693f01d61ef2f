"""What the tests share beside their fixtures: waiting on a condition, isolated Redis and PostgreSQL databases,
the Procfile's processes as a `Stack`, and the calls and reads the tests make against one.

Isolation (so two runs can share a machine): each user of Redis claims a free database number on the shared
server with a lock key; each PostgreSQL test gets its own database cloned from a template migrated once per run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import shlex
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import psycopg
import pytest
import redis
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from bench.env import BIN as BIN
from bench.env import ROOT as ROOT
from bench.env import free_port as free_port
from bench.env import procfile as procfile
from grpc_gateway.v1 import jobs_pb2, jobs_pb2_grpc
from taskapp.clock import utcnow
from taskapp.jobs import Job, NewJob, Priority
from taskapp.migrate import upgrade
from taskapp.store.engine import create_db_engine
from taskapp.store.port import JobStore
from taskapp.store.tables import jobs_table

REDIS_SERVER = os.environ.get("TASKAPP_TEST_REDIS", "redis://127.0.0.1:6379")
PG_ADMIN_DSN = os.environ.get("TASKAPP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
RUN_ID = uuid.uuid4().hex[:10]


T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisDatabases:
    """Hands out Redis database numbers 1-15 on the shared server, locked in db 0 against other runs."""

    LOCK = "taskapp:test-lock:{}"

    def __init__(self) -> None:
        self.admin = redis.Redis.from_url(f"{REDIS_SERVER}/0")
        self.token = uuid.uuid4().hex

    def acquire(self) -> str:
        for number in range(1, 16):
            if self.admin.set(self.LOCK.format(number), self.token, nx=True, ex=3600):
                redis.Redis.from_url(f"{REDIS_SERVER}/{number}").flushdb()
                return f"{REDIS_SERVER}/{number}"
        raise RuntimeError("all Redis test databases 1-15 are taken by other runs")

    def release(self, url: str) -> None:
        number = int(url.rsplit("/", 1)[1])
        redis.Redis.from_url(url).flushdb()
        if self.admin.get(self.LOCK.format(number)) == self.token.encode():
            self.admin.delete(self.LOCK.format(number))


class PostgresDatabases:
    """Creates databases cloned from a template that has taskapp's migrations applied (one migration per run)."""

    def __init__(self) -> None:
        self.template = f"taskapp_tpl_{RUN_ID}"
        self.created: list[str] = [self.template]
        self._admin(f'CREATE DATABASE "{self.template}"')
        upgrade(self.url(self.template))

    @staticmethod
    def _admin(sql: str) -> None:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(sql)

    @staticmethod
    def url(name: str) -> str:
        base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        return f"{base}/{name}"

    def create(self) -> str:
        name = f"taskapp_t_{RUN_ID}_{uuid.uuid4().hex[:8]}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.created.append(name)
        return self.url(name)

    def drop_all(self) -> None:
        for name in reversed(self.created):
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, migrated database of the given backend ("sqlite" or "postgres")."""
    if backend == "postgres":
        databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
        return databases.create()
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    return url


TERMINAL = {
    jobs_pb2.JOB_STATE_SUCCEEDED,
    jobs_pb2.JOB_STATE_FAILED,
    jobs_pb2.JOB_STATE_DEAD_LETTER,
    jobs_pb2.JOB_STATE_CANCELLED,
}


@dataclass
class Stack:
    """A gateway and (optionally) a worker on their own Redis database, SQL database and port."""

    workdir: Path
    env: dict[str, str]
    address: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def http_url(self) -> str:
        """The gateway's HTTP/JSON API."""
        return f"http://{self.env['TASKAPP_HTTP_ADDR']}"

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
        except AssertionError as late:
            raise AssertionError(f"{late}; its log ends: {self.log('gateway')[-2000:]}") from None
        finally:
            channel.close()

    def start_worker(
        self, concurrency: int = 2, name: str = "worker", ready: bool = True, **extra_env: str
    ) -> None:
        """The Procfile's worker as process `name`, waiting until it consumes unless `ready=False`; a second one
        gets a metrics port of its own."""
        if name != "worker":
            extra_env.setdefault("TASKAPP_WORKER_METRICS_ADDR", f"127.0.0.1:{free_port()}")
        self.start(name, "worker", TASKAPP_WORKER_CONCURRENCY=str(concurrency), **extra_env)
        if ready:
            wait_for(lambda: " ready." in self.log(name), 60, f"{name} to be ready")

    def start_scheduler(self, name: str = "scheduler", **extra_env: str) -> None:
        self.start(name, "scheduler", **extra_env)
        wait_for(lambda: "starting" in self.log(name), 30, f"{name} to start")

    def stop(self, name: str, timeout: float = 20) -> None:
        self._stop([name], timeout)

    def stop_all(self) -> None:
        """SIGTERM every process at once, then wait for them: a test's teardown waits for the slowest only."""
        self._stop(list(self.processes), timeout=20)

    def _stop(self, names: list[str], timeout: float) -> None:
        processes = [process for name in names if (process := self.processes.pop(name, None)) is not None]
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):  # the whole group ended meanwhile
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def kill_all(self) -> None:
        """SIGKILL every process and its children: what a test has done with them is over, and stopping each
        gently costs seconds of the cores every test shares (graceful stops are tests of their own)."""
        for name in list(self.processes):
            self.kill(name)

    def kill(self, name: str) -> None:
        """SIGKILL a process and all its children, as a machine losing power would."""
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
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

        return wait_for(finished, timeout, f"job {job_id} to finish")


# Calls and reads against a stack.


def submit(stack: Stack, type: str, payload: dict[str, Any] | None = None, **fields: Any) -> str:
    request = jobs_pb2.SubmitJobRequest(type=type, **fields)
    if payload is not None:
        request.payload.update(payload)
    return str(stack.stub().SubmitJob(request, timeout=10).job_id)


def submit_at(
    stack: Stack, type: str, run_at: datetime, payload: dict[str, Any] | None = None, **fields: Any
) -> str:
    request = jobs_pb2.SubmitJobRequest(type=type, **fields)
    request.run_at.FromDatetime(run_at)
    if payload is not None:
        request.payload.update(payload)
    return str(stack.stub().SubmitJob(request, timeout=10).job_id)


def get(stack: Stack, job_id: str) -> jobs_pb2.Job:
    return stack.stub().GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=10)


def sql_count(stack: Stack, table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
    return count_rows(stack.env["DATABASE_URL"], table, *where)


def count_rows(database_url: str, table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one())
    finally:
        engine.dispose()


def stored_job_ids(database_url: str) -> set[str]:
    """The id of every job in the database, whatever its state."""
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.select(jobs_table.c.job_id)).scalars())
    finally:
        engine.dispose()


def metric_total(address: str, sample: str, timeout: float = 10, **labels: str) -> float:
    """The sum of a process's /metrics samples named `sample` whose labels include `labels`."""
    families = text_string_to_metric_families(httpx.get(f"http://{address}/metrics", timeout=timeout).text)
    return sum(
        found.value
        for family in families
        for found in family.samples
        if found.name == sample and labels.items() <= found.labels.items()
    )


def dead_letters(stack: Stack) -> int:
    return int(redis.Redis.from_url(stack.env["REDIS_URL"]).llen("dead_letter"))


def wait_dead_letters(stack: Stack, count: int) -> None:
    """The worker writes DEAD_LETTER in SQL first, then publishes the message: allow it that moment."""
    wait_for(lambda: dead_letters(stack) == count, 10, f"{count} message(s) in dead_letter")


# Stores.


def new_job(
    job_id: str,
    *,
    type: str = "echo",
    priority: Priority = Priority.DEFAULT,
    payload: dict[str, Any] | None = None,
    timeout_seconds: int = 300,
    run_at: datetime | None = None,
    labels: dict[str, str] | None = None,
    unique_key: str | None = None,
    unique_for: timedelta | None = None,
    concurrency_key: str = "",
    concurrency_limit: int = 0,
) -> NewJob:
    """A job as the service would hand it to a store, its fingerprint made from its id."""
    return NewJob(
        job_id=job_id,
        type=type,
        priority=priority,
        payload={"n": 1, "nested": {"list": [1, "two", None]}} if payload is None else payload,
        max_attempts=3,
        timeout_seconds=timeout_seconds,
        fingerprint=hashlib.sha256(job_id.encode()).hexdigest(),
        run_at=run_at,
        labels=labels or {},
        unique_key=unique_key,
        unique_for=unique_for,
        concurrency_key=concurrency_key,
        concurrency_limit=concurrency_limit,
    )


def create(store: JobStore, new: NewJob, now: datetime | None = None) -> tuple[Job, bool]:
    """One job into a store, as a batch of one."""
    [result] = store.create_many([new], now or utcnow())
    return result


class DatabaseProxy:
    """A TCP relay between some processes and a database, which the test can cut as a network partition
    would: while cut, new connections are not accepted and what is sent on open ones goes nowhere, with no
    error to tell. Healing closes the connections the cut left behind; clients connect again."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.cut = threading.Event()
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url_for(self, url: str) -> str:
        """`url` (a database URL on the upstream port) through this relay."""
        return url.replace(f":{self.upstream[1]}/", f":{self.port}/")

    def _accept(self) -> None:
        while not self._closed:
            if self.cut.is_set():
                time.sleep(0.05)  # Connections wait in the backlog, unanswered, as across a partition.
                continue
            ready, _, _ = select.select([self.listener], [], [], 0.05)
            if not ready or self.cut.is_set():
                continue
            client, _ = self.listener.accept()
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65_536):
                if not self.cut.is_set():
                    target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                end.close()

    def heal(self) -> None:
        for connection in self._sockets:
            connection.close()
        self._sockets = []
        self.cut.clear()

    def close(self) -> None:
        self._closed = True
        self.heal()
        self.listener.close()


def taskapp(stack: Stack, *args: str) -> str:
    """The `taskapp` command's output against the stack's gateway; it must succeed."""
    done = subprocess.run(
        [str(BIN / "taskapp"), "--address", stack.address, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@dataclass
class Run:
    """One run of a `recorded` job, as its handler wrote it down."""

    job_id: str
    attempt: int
    pid: int
    started: float
    #: The run's last sign of life: its last tick, or its finish.
    last_seen: float
    finished: bool = False


class ExecutionRecord:
    """What `recorded` jobs wrote to their file, outside taskapp's SQL: a line when a run starts, while it
    holds (every 0.2 s), and when it finishes. Proof of how often each job ran, from outside taskapp."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def payload(self, hold: Path | None = None, seconds: float = 0.0) -> dict[str, Any]:
        return {"record": str(self.path), "hold": str(hold or ""), "seconds": seconds}

    def runs(self) -> list[Run]:
        runs: list[Run] = []
        open_runs: dict[tuple[str, int], Run] = {}
        text = self.path.read_text() if self.path.exists() else ""
        for line in text.splitlines():
            event, job_id, attempt, pid, at = line.split()
            key = (job_id, int(pid))
            if event == "start":
                open_runs[key] = Run(job_id, int(attempt), int(pid), float(at), float(at))
                runs.append(open_runs[key])
            elif key in open_runs:
                open_runs[key].last_seen = float(at)
                open_runs[key].finished = event == "finish"
        return runs

    def of(self, job_id: str) -> list[Run]:
        return [run for run in self.runs() if run.job_id == job_id]

    def finished(self) -> dict[str, int]:
        """Finished runs per job."""
        counts: dict[str, int] = {}
        for run in self.runs():
            counts[run.job_id] = counts.get(run.job_id, 0) + run.finished
        return counts

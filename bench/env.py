"""The benchmark's own world: a PostgreSQL database, a Redis database number and ports of its own, and the
Procfile's processes started on them, so a run shares the machine with tests or another run."""

from __future__ import annotations

import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.cluster import Host
from taskapp.migrate import upgrade

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_ADMIN = os.environ.get("TASKAPP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_SERVER = os.environ.get("TASKAPP_BENCH_REDIS", "redis://127.0.0.1:6379")
#: The same lock keys the tests use to share the Redis server's database numbers.
REDIS_LOCK = "taskapp:test-lock:{}"


#: Ports handed out lately, by any run on this machine: one file each (`free_port`).
PORTS_GIVEN = Path("/tmp/taskapp-ports-given")
#: How long a port handed out is not handed out again: long enough for its process to have bound it.
PORT_HELD_SECONDS = 600


def free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range (a port the kernel handed out and took back
    can go to the next outgoing connection, to Redis say, before the process it was meant for binds it), and
    not handed out lately by this or another test process: two of them picking the same port before either
    process binds it would start one of those processes on a port in use."""
    low, _ = (int(bound) for bound in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    PORTS_GIVEN.mkdir(exist_ok=True)
    while True:
        port = random.randrange(low // 2, low)
        if not _take(PORTS_GIVEN / str(port)):
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def _take(marker: Path) -> bool:
    """Create `marker` (after removing it if it is older than a port is held); False if another holds it."""
    try:
        if time.time() - marker.stat().st_mtime >= PORT_HELD_SECONDS:
            marker.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return False
    return True


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if line.strip() and not line.startswith("#"))


@dataclass
class World:
    """One PostgreSQL database and one Redis database, claimed for the run and given back at its end."""

    workdir: Path
    #: The PostgreSQL server (its admin database) and the Redis server the run claims its own part of.
    pg_admin: str = PG_ADMIN
    redis_server: str = REDIS_SERVER
    database: str = field(default_factory=lambda: f"taskapp_bench_{uuid.uuid4().hex[:10]}")
    redis_url: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _token: str = field(default_factory=lambda: uuid.uuid4().hex)
    _redis: redis.Redis | None = None
    _sql: psycopg.Connection[tuple[Any, ...]] | None = None

    #: Where the processes write their stamps of each job's way to its run (`taskapp.start_latency`), when started
    #: with `traced()`.
    @property
    def trace_file(self) -> Path:
        return self.workdir / "trace.jsonl"

    @property
    def database_url(self) -> str:
        base = self.pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        return f"{base}/{self.database}"

    def open(self) -> None:
        with psycopg.connect(self.pg_admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        upgrade(self.database_url)
        admin = redis.Redis.from_url(f"{self.redis_server}/0")
        for number in range(1, 16):
            if admin.set(REDIS_LOCK.format(number), self._token, nx=True, ex=3600):
                self.redis_url = f"{self.redis_server}/{number}"
                self.redis().flushdb()
                return
        raise RuntimeError("all Redis databases 1-15 are taken by tests or other runs")

    def close(self) -> None:
        for name in list(self.processes):
            self.stop(name)
        if self._sql is not None:
            self._sql.close()
        if self.redis_url:
            self.redis().flushdb()
            number = self.redis_url.rsplit("/", 1)[1]
            admin = redis.Redis.from_url(f"{self.redis_server}/0")
            if admin.get(REDIS_LOCK.format(number)) == self._token.encode():
                admin.delete(REDIS_LOCK.format(number))
        with psycopg.connect(self.pg_admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def redis(self) -> redis.Redis:
        """One client for the run: the drains poll through it, and a connection per poll would cost the
        machine more than the poll."""
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.redis_url)
        return self._redis

    def sql(self, query: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A query on the run's database, over one connection for the run (the drains poll through it)."""
        if self._sql is None:
            dsn = self.pg_admin.rsplit("/", 1)[0] + f"/{self.database}"
            self._sql = psycopg.connect(dsn, autocommit=True)
        cursor = self._sql.execute(query, parameters or None)
        return cursor.fetchall() if cursor.description else []

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "TASKAPP_WORKER_METRICS_ADDR": "",
            **extra,
        }

    def traced(self) -> dict[str, str]:
        """The environment that has a process stamp each job in `trace_file`. Only the latency phase's processes
        run with it: a line written per job and process costs the gateway a tenth of its SubmitJob rate, and
        production runs without it."""
        return {"TASKAPP_TRACE_FILE": str(self.trace_file)}

    def start(self, name: str, command: str, host: Host | None = None, **extra_env: str) -> None:
        """Start process `name` here, or on a host of a network-namespace cluster."""
        if host is not None:
            self.processes[name] = host.start(name, command, self.env(**extra_env))
            return
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        self.processes[name] = subprocess.Popen(
            shlex.split(command),
            cwd=self.workdir,
            env=self.env(**extra_env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

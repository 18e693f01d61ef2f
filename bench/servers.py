"""Servers of a test's or a benchmark's own, to stop and start: a throwaway PostgreSQL cluster (or a standby of
one) and a redis-server, on a free port of 127.0.0.1 or on a host of a network-namespace cluster
(`bench.cluster`)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import redis

from bench.cluster import Host
from bench.env import free_port, wait_until

PG_BIN = next(Path("/usr/lib/postgresql").glob("*/bin"), Path("/nonexistent"))


class OwnPostgres:
    """A PostgreSQL cluster in a temporary directory, run as the `postgres` user when we are root (initdb
    refuses to run as root): on a free port of 127.0.0.1, or on port 5432 of a cluster host, trusting the
    cluster's network (replication too). `replica_of` makes it a streaming standby of that one, copied from it
    with pg_basebackup. `settings`: server settings (`-c name=value`), fsync off unless given."""

    def __init__(
        self,
        host: Host | None = None,
        network: str = "",
        replica_of: OwnPostgres | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.settings = {"fsync": "off"} if settings is None else settings  # tests want speed, not durability
        self.dir = Path(tempfile.mkdtemp(prefix="taskapp-pg-"))
        self.data = self.dir / "data"
        self.host = host
        self.address = host.address if host is not None else "127.0.0.1"
        self.port = 5432 if host is not None else free_port()
        self.url = f"postgresql+psycopg://postgres@{self.address}:{self.port}/postgres"
        self._user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self._user is not None:
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
        if replica_of is not None:
            self._run(
                PG_BIN / "pg_basebackup", "-h", replica_of.address, "-p", replica_of.port, "-U", "postgres",
                "-D", self.data, "--write-recovery-conf", "--wal-method=stream", "--no-sync",
            )  # fmt: skip
            return
        self._run(PG_BIN / "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        if network:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {network} trust\nhost replication all {network} trust\n")

    def _run(self, *command: object, check: bool = True) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._user is not None else []
        argv = [*prefix, *map(str, command)]
        if self.host is not None:
            argv = self.host.command(argv)
        subprocess.run(argv, check=check, capture_output=True, timeout=120)

    def start(self) -> None:
        settings = "".join(f" -c {name}={value}" for name, value in self.settings.items())
        options = f"-p {self.port} -c listen_addresses={self.address} -k {self.dir}{settings}"
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-o", options, "-l", self.dir / "log", "-w", "start")

    def promote(self) -> None:
        """A standby becomes a primary, as an operator or a failover manager would make it."""
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-w", "promote")

    def stop(self) -> None:
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


class OwnRedis:
    """A redis-server that keeps nothing on disk: on a free port of 127.0.0.1, or on port 6379 of a cluster
    host."""

    def __init__(self, workdir: Path, host: Host | None = None) -> None:
        self.dir = workdir
        self.host = host
        self.address = host.address if host is not None else "127.0.0.1"
        self.port = 6379 if host is not None else free_port()
        self.url = f"redis://{self.address}:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", self.address, "--save", "", "--appendonly",
                "no", "--dir", str(self.dir)]  # fmt: skip
        if self.host is not None:
            # Off loopback Redis refuses clients without a password unless told otherwise: the cluster's
            # network is the test's own.
            argv = self.host.command([*argv, "--protected-mode", "no"])
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        wait_until(lambda: _answers(client), 10, "redis-server to answer")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False

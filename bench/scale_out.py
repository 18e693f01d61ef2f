"""The cluster mode (`scripts/bench --cluster`): what spreading taskapp over hosts costs, and what one job costs
each part of it.

The stack runs on hosts made of network namespaces (`bench.cluster`), every one on this machine's cores: a
database host (a PostgreSQL of the run's own, fsync on, with pg_stat_statements), a broker host (Redis), two
gateway hosts, three worker hosts and a scheduler host. In that one cluster the run times SubmitJob through one
gateway, then through both; and the drain with a worker on one host, then on three. Same cores, same servers:
the ratios say what distribution costs. Around the two-gateway submit and the three-host drain it reads the
servers' own counters and every process's CPU: the per-job figures of docs/capacity.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench import phases
from bench.cluster import Cluster, Host
from bench.env import World, procfile, serving, wait_until
from bench.servers import OwnPostgres, OwnRedis

GRPC_PORT = 50051
HTTP_PORT = 8080
#: Off loopback a gateway serves only callers with a token.
TOKEN = "bench-token"
METADATA = (("authorization", f"Bearer {TOKEN}"),)
SUBMIT_CONCURRENCY = 50
WORKER_HOSTS = 3
#: Lines of the SQL and Redis tables kept in the figures: the rest are rare statements and commands.
TOP = 12
#: The run's own PostgreSQL: durable, as in production, and counting its statements.
POSTGRES_SETTINGS = {
    "fsync": "on",
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "top",
}
TICKS = os.sysconf("SC_CLK_TCK")
#: What each host runs, where its name does not say.
KINDS = {"db": "postgres"}


def host_cpu_seconds(host: Host) -> dict[int, float]:
    """CPU seconds of each process on `host`, with its reaped children's (a backend that exited meanwhile). A
    process's own time is its threads' run time in nanoseconds (schedstat): in clock ticks, a process that
    worked 10 ms in the tiny run's phase could show none. A thread that exits takes its time with it; the
    processes measured keep theirs (thread pools, PostgreSQL's single-threaded backends)."""
    seconds = {}
    for pid in host.pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        fields = stat.rpartition(")")[2].split()
        # cutime, cstime: fields 16-17 of proc(5), counted from the state (field 3).
        seconds[pid] = (
            sum(thread_run_ns(pid, tid) for tid in tids) / 1e9 + sum(map(int, fields[13:15])) / TICKS
        )
    return seconds


def thread_run_ns(pid: int, tid: str) -> int:
    """Nanoseconds thread `tid` of `pid` has run (0 if it has just exited)."""
    try:
        return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    except FileNotFoundError:
        return 0


@dataclass
class Counters:
    """What the servers and processes had done at one moment."""

    cpu: dict[str, float]
    redis_calls: dict[str, int]
    wal_bytes: int
    commits: int


@dataclass
class ClusterBench:
    """The cluster and the run's world in it."""

    cluster: Cluster
    database: OwnPostgres
    broker: OwnRedis
    world: World
    #: A Celery app of its own to pause and start the workers: raw Celery's is bound to the one-host run's Redis.
    control: Celery
    gateways: list[Host] = field(default_factory=list)
    workers: list[Host] = field(default_factory=list)
    scheduler: Host | None = None
    #: How often a drain asked whether it was through (an LLEN and an HLEN each).
    drain_checks: int = 0
    #: How often a drain asked whether its first message was taken (an LLEN each).
    start_checks: int = 0

    @classmethod
    def create(cls, workdir: Path) -> ClusterBench:
        cluster = Cluster(workdir)
        try:
            database = OwnPostgres(
                cluster.add_host("db"), network=str(cluster.subnet), settings=POSTGRES_SETTINGS
            )
            database.start()
            broker = OwnRedis(workdir, cluster.add_host("broker"))
            broker.start()
        except BaseException:
            cluster.remove()
            raise
        admin = f"postgresql://postgres@{database.address}:{database.port}/postgres"
        world = World(workdir, pg_admin=admin, redis_server=f"redis://{broker.address}:{broker.port}")
        control = Celery("bench_cluster")
        control.config_from_object("celeryconfig")
        return cls(cluster, database, broker, world, control)

    def open(self) -> None:
        self.world.open()
        self.world.sql("CREATE EXTENSION pg_stat_statements")
        # The stamps cost CPU that only the one-host latency phase needs.
        env = {"TASKAPP_TRACE_FILE": "", "TASKAPP_AUTH_TOKENS": TOKEN}
        for number in (1, 2):
            host = self.cluster.add_host(f"gateway-{number}")
            self.world.start(
                host.name,
                procfile()["gateway"],
                host,
                TASKAPP_GRPC_ADDR=f"{host.address}:{GRPC_PORT}",
                TASKAPP_METRICS_ADDR=f"{host.address}:9464",
                TASKAPP_HTTP_ADDR=f"{host.address}:{HTTP_PORT}",
                **env,
            )
            self.gateways.append(host)
        self.scheduler = self.cluster.add_host("scheduler")
        self.world.start("scheduler", procfile()["scheduler"], self.scheduler, **env)
        for host in self.gateways:
            wait_until(lambda: serving(self.address(host)), 60, f"{host.name}'s gateway to serve")  # noqa: B023
        self.control.conf.update(imports=(), broker_url=self.world.redis_url)
        self.add_worker()

    def add_worker(self) -> None:
        """A worker on a host of its own, as the Procfile runs it, paused with the others."""
        host = self.cluster.add_host(f"worker-{len(self.workers) + 1}")
        self.world.start(host.name, procfile()["worker"], host, TASKAPP_TRACE_FILE="")
        self.workers.append(host)
        wait_until(
            lambda: len(self.control.control.ping(timeout=0.5)) == len(self.workers),
            60,
            f"{host.name}'s worker to answer",
        )
        phases.pause_consuming(self.control, len(self.workers))

    def resume(self) -> None:
        """Every worker takes from the queue again."""
        replies = self.control.control.add_consumer(
            phases.QUEUE, reply=True, limit=len(self.workers), timeout=5
        )
        if len(replies) != len(self.workers):
            raise RuntimeError(f"{len(replies)} of {len(self.workers)} worker(s) answered")

    def address(self, *hosts: Host) -> str:
        return ",".join(f"{host.address}:{GRPC_PORT}" for host in hosts)

    def close(self) -> None:
        try:
            self.world.close()
        finally:
            self.database.remove()
            self.broker.stop()
            self.cluster.remove()

    def counters(self) -> Counters:
        cpu: dict[str, float] = {}
        for host in self.cluster.hosts.values():
            if host.name == "broker":
                continue  # Redis' own count, below
            seconds = host_cpu_seconds(host)
            if host in self.workers:
                main = self.world.processes[host.name].pid
                cpu["worker main"] = cpu.get("worker main", 0.0) + seconds.pop(main, 0.0)
                cpu["worker pool"] = cpu.get("worker pool", 0.0) + sum(seconds.values())
                continue
            kind = KINDS.get(host.name, host.name.split("-")[0])
            cpu[kind] = cpu.get(kind, 0.0) + sum(seconds.values())
        # In microseconds: a small run costs Redis less than one of /proc's 10 ms ticks.
        used = self.world.redis().info("cpu")
        cpu["redis"] = used["used_cpu_user"] + used["used_cpu_sys"]
        times = os.times()
        cpu["benchmark client"] = times.user + times.system
        stats = self.world.redis().info("commandstats")
        wal = self.world.sql("SELECT wal_bytes FROM pg_stat_wal")[0][0]
        commits = self.world.sql(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )[0][0]
        return Counters(
            cpu=cpu,
            redis_calls={name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()},
            wal_bytes=int(wal),
            commits=int(commits),
        )

    @contextmanager
    def costs(self, jobs: int, into: dict[str, Any]) -> Iterator[None]:
        """Per job, what the block cost: CPU milliseconds of each process kind, Redis commands, SQL
        statements, commits and WAL bytes."""
        self.world.sql("SELECT pg_stat_statements_reset()")
        before = self.counters()
        checks_before, starts_before = self.drain_checks, self.start_checks
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        after = self.counters()
        statements = self.world.sql(
            "SELECT query, calls, total_exec_time FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            # Not the benchmark's own: its counters, and its check that the drain is through.
            "AND query NOT LIKE '%pg_stat%' AND query NOT LIKE 'SELECT count(*) FROM jobs%' "
            f"ORDER BY calls DESC LIMIT {TOP}"
        )
        calls_made = {
            name: calls - before.redis_calls.get(name, 0) for name, calls in after.redis_calls.items()
        }
        for own in ("llen", "hlen"):
            calls_made[own] = calls_made.get(own, 0) - (self.drain_checks - checks_before)
        calls_made["llen"] -= self.start_checks - starts_before
        redis_calls = {name: calls / jobs for name, calls in calls_made.items() if calls > 0}
        into.update(
            {
                "jobs": jobs,
                "seconds": seconds,
                "cpu_ms": {
                    kind: (after.cpu[kind] - before.cpu.get(kind, 0.0)) * 1_000 / jobs for kind in after.cpu
                },
                "redis_calls": dict(sorted(redis_calls.items(), key=lambda item: -item[1])[:TOP]),
                "sql": [
                    {"query": " ".join(query.split())[:100], "calls": calls / jobs, "ms": total / jobs}
                    for query, calls, total in statements
                ],
                "commits": (after.commits - before.commits) / jobs,
                "wal_bytes": (after.wal_bytes - before.wal_bytes) / jobs,
            }
        )


def drained(bench: ClusterBench, total: int) -> bool:
    """`phases.taskapp_drained`, counted: its LLEN and HLEN are the benchmark's, not taskapp's."""
    bench.drain_checks += 1
    return phases.taskapp_drained(bench.world, total)


def start_checked(bench: ClusterBench) -> None:
    """A drain's wait for its first message made an LLEN: the benchmark's, not taskapp's."""
    bench.start_checks += 1


def measure(workdir: Path, count: int, progress: Progress) -> dict[str, Any]:
    """The cluster's figures: submit and drain rates with one gateway and one worker host, then with two and
    three; and the per-job costs of the two-gateway submit and the three-host drain."""
    workdir.mkdir(exist_ok=True)
    bench = ClusterBench.create(workdir)
    figures: dict[str, Any] = {"costs": {"submit": {}, "drain": {}}}
    try:
        bench.open()
        one, both = bench.gateways[0], bench.gateways
        with phases.progress_of(progress, "cluster: SubmitJob through one gateway", count) as advance:
            figures["submit_one_gateway_per_s"] = phases.submit_jobs(
                bench.address(one), count, SUBMIT_CONCURRENCY, advance, METADATA
            )
        # Each submit phase sends a call before its clock starts: the drains count what SQL holds.
        first = phases.job_count(bench.world)
        figures["drain_one_host_per_s"] = phases.drain(
            bench.control,
            bench.world,
            lambda: drained(bench, first),
            first,
            "cluster: drain on one worker host",
            progress,
            polled=lambda: start_checked(bench),
        )
        while len(bench.workers) < WORKER_HOSTS:
            bench.add_worker()
        with (
            bench.costs(count, figures["costs"]["submit"]),
            phases.progress_of(progress, "cluster: SubmitJob through two gateways", count) as advance,
        ):
            figures["submit_two_gateways_per_s"] = phases.submit_jobs(
                bench.address(*both), count, SUBMIT_CONCURRENCY, advance, METADATA
            )
        total = phases.job_count(bench.world)
        with bench.costs(total - first, figures["costs"]["drain"]):
            figures["drain_three_hosts_per_s"] = phases.drain(
                bench.control,
                bench.world,
                lambda: drained(bench, total),
                total - first,
                f"cluster: drain on {WORKER_HOSTS} worker hosts",
                progress,
                workers=WORKER_HOSTS,
                polled=lambda: start_checked(bench),
            )
        figures["jobs_by_gateway"] = {host.name: jobs_submitted(host) for host in both}
        figures["projection"] = cpu_bound_drain(figures)
    finally:
        bench.close()
    return figures


def cpu_bound_drain(figures: dict[str, Any]) -> dict[str, float]:
    """The capacity model's own check (docs/capacity.md): if the drain is bound by CPU, the machine's cores
    divided by the CPU all processes spend per job give its rate."""
    cores = os.cpu_count() or 1
    per_job = sum(figures["costs"]["drain"]["cpu_ms"].values())
    return {
        "cores": cores,
        "cpu_ms_per_job": per_job,
        "predicted_per_s": cores * 1_000 / per_job,
        "measured_per_s": figures["drain_three_hosts_per_s"],
    }


def jobs_submitted(host: Host) -> int:
    """Jobs the gateway on `host` created, from its /metrics."""
    reply = httpx.get(f"http://{host.address}:9464/metrics", timeout=10)
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(reply.text)
            for sample in family.samples
            if sample.name == "taskapp_jobs_submitted_total"
        )
    )


def targets(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Distribution's own cost: with the same cores, more hosts must not be slower (docs/many-hosts.md)."""
    rows = [
        (
            "S1 SubmitJob: two gateways / one",
            figures["submit_two_gateways_per_s"] / figures["submit_one_gateway_per_s"],
        ),
        (
            f"S2 drain: {WORKER_HOSTS} worker hosts / one",
            figures["drain_three_hosts_per_s"] / figures["drain_one_host_per_s"],
        ),
    ]
    return [
        {"measure": name, "value": value, "target": ">= 0.9", "met": value >= 0.9} for name, value in rows
    ]


def report(figures: dict[str, Any], console: Console) -> None:
    rates = Table(title="Many hosts, one machine's cores (per second)")
    for column in ("", "one", "more", "ratio"):
        rates.add_column(column, justify="right" if column else "left")
    for name, one, more in (
        ("SubmitJob c=50: one gateway / two", "submit_one_gateway_per_s", "submit_two_gateways_per_s"),
        (f"drain: one worker host / {WORKER_HOSTS}", "drain_one_host_per_s", "drain_three_hosts_per_s"),
    ):
        rates.add_row(
            name, f"{figures[one]:,.0f}", f"{figures[more]:,.0f}", f"{figures[more] / figures[one]:.2f}x"
        )
    console.print(rates)
    console.print(f"jobs created by each gateway in the cluster: {figures['jobs_by_gateway']}")
    costs = figures["costs"]
    cpu = Table(title="CPU per job (ms): two gateways, three worker hosts")
    for column in ("process kind", "submit", "drain"):
        cpu.add_column(column, justify="right" if column != "process kind" else "left")
    for kind in costs["submit"]["cpu_ms"]:
        cpu.add_row(kind, f"{costs['submit']['cpu_ms'][kind]:.2f}", f"{costs['drain']['cpu_ms'][kind]:.2f}")
    cpu.add_row(
        "all",
        f"{sum(costs['submit']['cpu_ms'].values()):.2f}",
        f"{sum(costs['drain']['cpu_ms'].values()):.2f}",
    )
    console.print(cpu)
    projection = figures["projection"]
    console.print(
        f"projected drain, {projection['cores']} cores / {projection['cpu_ms_per_job']:.2f} ms of CPU per job: "
        f"{projection['predicted_per_s']:,.0f} jobs/s; measured {projection['measured_per_s']:,.0f} jobs/s "
        f"({projection['measured_per_s'] / projection['predicted_per_s']:.0%} of it)"
    )
    for phase in ("submit", "drain"):
        cost = costs[phase]
        console.print(
            f"{phase}, per job: {cost['commits']:.2f} commits, {cost['wal_bytes']:,.0f} WAL bytes; Redis: "
            + ", ".join(f"{name} {calls:.2f}" for name, calls in cost["redis_calls"].items())
        )
        sql = Table(title=f"SQL per job, {phase} (pg_stat_statements)")
        for column in ("calls", "ms", "statement"):
            sql.add_column(column, justify="right" if column != "statement" else "left")
        for statement in cost["sql"]:
            sql.add_row(f"{statement['calls']:.2f}", f"{statement['ms']:.3f}", statement["query"])
        console.print(sql)

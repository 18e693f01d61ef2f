"""taskapp on many hosts: network-namespace hosts (tests/cluster.py) for the database, the broker, two
gateways, three workers and two schedulers, each process started as the Procfile starts it, reached over the
cluster's bridge. Every count of runs comes from the jobs' execution record, outside taskapp's SQL."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import psycopg
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from grpc_gateway.client import JobClient, JobServiceError
from grpc_gateway.v1 import jobs_pb2, jobs_pb2_grpc
from taskapp.migrate import upgrade
from taskapp.store.engine import create_db_engine
from taskapp.store.tables import jobs_table
from tests.cluster import Cluster, Host
from tests.helpers import BIN, ROOT, ExecutionRecord, OwnPostgres, OwnRedis, Run, procfile, wait_for

TOKEN = "cluster-test-token"
#: A short lease, so a lost host's runs are rescued soon; the bounds below are stated in it.
LEASE = 10.0
GRPC_PORT = 50051


@dataclass
class TaskappCluster:
    """The hosts, the services on them, and the environment every taskapp process shares."""

    cluster: Cluster
    database: OwnPostgres
    broker: OwnRedis
    env: dict[str, str]
    standby: OwnPostgres | None = None
    gateways: list[Host] = field(default_factory=list)
    workers: list[Host] = field(default_factory=list)
    schedulers: list[Host] = field(default_factory=list)

    def start(self, host: Host, process: str, **extra_env: str) -> None:
        host.start(process, procfile()[process], {**self.env, **extra_env})

    def stub(self, gateway: Host) -> jobs_pb2_grpc.JobServiceStub:
        return jobs_pb2_grpc.JobServiceStub(grpc.insecure_channel(f"{gateway.address}:{GRPC_PORT}"))

    def count(self, *where: sa.ColumnElement[bool]) -> int:
        engine = create_db_engine(self.env["DATABASE_URL"])
        try:
            with engine.connect() as conn:
                query = sa.select(sa.func.count()).select_from(jobs_table).where(*where)
                return int(conn.execute(query).scalar_one())
        finally:
            engine.dispose()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., TaskappCluster]]:
    """`make_cluster(standby=False)`: the database host, the broker host, two gateway hosts, three worker hosts
    and two scheduler hosts, every process started. With `standby`, a second database host streams the first
    one's WAL, synchronously (a commit waits for the standby), and DATABASE_URL names both, read-write first."""
    made: list[tuple[Cluster, list[OwnPostgres]]] = []

    def make(standby: bool = False) -> TaskappCluster:
        cluster = Cluster(tmp_path)
        databases: list[OwnPostgres] = []
        made.append((cluster, databases))
        database = OwnPostgres(cluster.add_host("db"), network=str(cluster.subnet))
        databases.append(database)
        database.start()
        upgrade(database.url)
        database_url = database.url
        replica = None
        if standby:
            replica = OwnPostgres(cluster.add_host("db-standby"), replica_of=database)
            databases.append(replica)
            replica.start()
            with psycopg.connect(database.url.replace("+psycopg", ""), autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
                conn.execute("SELECT pg_reload_conf()")
            database_url = (
                f"postgresql://postgres@{database.address}:5432,{replica.address}:5432/postgres"
                "?target_session_attrs=read-write"
            )
        broker = OwnRedis(tmp_path, cluster.add_host("broker"))
        broker.start()
        env = {
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": os.environ.get("HOME", str(tmp_path)),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": database_url,
            "REDIS_URL": broker.url,
            "TASKAPP_HANDLER_MODULES": "tests.handlers_for_tests",
            "TASKAPP_AUTH_TOKENS": TOKEN,
            "TASKAPP_LEASE_SECONDS": str(LEASE),
            "TASKAPP_WORKER_SHUTDOWN_TIMEOUT": "2",
        }
        world = TaskappCluster(cluster, database, broker, env, standby=replica)
        for name in ("gateway-1", "gateway-2"):
            host = cluster.add_host(name)
            world.start(
                host,
                "gateway",
                TASKAPP_GRPC_ADDR=f"{host.address}:{GRPC_PORT}",
                TASKAPP_METRICS_ADDR=f"{host.address}:9464",
            )
            world.gateways.append(host)
        for name in ("worker-1", "worker-2", "worker-3"):
            host = cluster.add_host(name)
            world.start(
                host,
                "worker",
                TASKAPP_WORKER_CONCURRENCY="2",
                TASKAPP_WORKER_METRICS_ADDR=f"{host.address}:9465",
            )
            world.workers.append(host)
        for name in ("scheduler-1", "scheduler-2"):
            host = cluster.add_host(name)
            world.start(host, "scheduler")
            world.schedulers.append(host)
        for host, process, line in [
            *((host, "gateway", "listening on") for host in world.gateways),
            *((host, "worker", " ready.") for host in world.workers),
        ]:
            wait_for(lambda: line in host.log(process), 120, f"{host.name}'s {process} to start")  # noqa: B023
        return world

    yield make
    for cluster, databases in made:
        cluster.remove()
        for database in databases:
            database.remove()


@pytest.fixture
def taskapp_cluster(make_cluster: Callable[..., TaskappCluster]) -> TaskappCluster:
    return make_cluster()


def submit_through(
    world: TaskappCluster,
    gateways: list[Host],
    payload: dict[str, Any],
    count: int,
    priority: jobs_pb2.Priority = jobs_pb2.PRIORITY_DEFAULT,
) -> list[str]:
    """`count` recorded jobs, in batches of 500 sent to each gateway in turn."""
    ids: list[str] = []
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    for batch in range(0, count, 500):
        request = jobs_pb2.SubmitJobsRequest()
        for _ in range(min(500, count - batch)):
            request.jobs.add(type="recorded", priority=priority).payload.update(payload)
        stub = world.stub(gateways[(batch // 500) % len(gateways)])
        reply = stub.SubmitJobs(request, timeout=60, metadata=metadata)
        ids += [result.job_id for result in reply.results]
    return ids


@pytest.mark.slow
def test_a_worker_host_killed_mid_drain_has_its_jobs_done_elsewhere_and_none_twice(
    taskapp_cluster: TaskappCluster, tmp_path: Path
) -> None:
    world = taskapp_cluster
    record = ExecutionRecord(tmp_path / "record")
    ids = submit_through(world, world.gateways, record.payload(seconds=0.01), 5_000)
    assert len(set(ids)) == 5_000
    victim = world.workers[1]
    victim_pids = set(victim.pids())
    pids_of = {host.name: set(host.pids()) for host in world.workers}
    wait_for(lambda: len(record.runs()) >= 1_000, 120, "the drain to be under way")
    # Jobs that hold while `hold` exists, ahead of the rest, more than there are pool processes: each host is
    # soon running two of them, and the victim is killed in the middle of its runs.
    hold = tmp_path / "hold"
    hold.touch()
    held = submit_through(world, world.gateways, record.payload(hold), 12, priority=jobs_pb2.PRIORITY_HIGH)
    ids += held

    def holding() -> int:
        return sum(
            1 for run in record.runs() if run.pid in victim_pids and not run.finished and run.job_id in held
        )

    wait_for(lambda: holding() == 2, 60, f"{victim.name} to run two held jobs")
    victim.kill()
    killed = time.time()
    hold.unlink()

    wait_for(
        lambda: world.count(jobs_table.c.state == "SUCCEEDED") == len(ids),
        180,
        "every job to succeed",
        interval=1,
    )
    runs = record.runs()
    assert record.finished() == dict.fromkeys(ids, 1), "each handler finished once"
    lost = {run.job_id for run in runs if run.pid in victim_pids and not run.finished}
    assert lost, f"{victim.name} was killed with runs under way"
    for job_id in lost:
        [done] = [run for run in record.of(job_id) if run.finished]
        assert done.pid not in victim_pids
        assert done.last_seen - killed <= LEASE + 15, (
            f"{job_id} done {done.last_seen - killed:.1f} s after the kill"
        )
    hosts_that_ran = {name for name, pids in pids_of.items() if any(run.pid in pids for run in runs)}
    assert hosts_that_ran == {host.name for host in world.workers}


def overlapping(runs: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs of one job that were alive at the same time (start to last sign of life)."""
    by_job: dict[str, list[Run]] = {}
    for run in runs:
        by_job.setdefault(run.job_id, []).append(run)
    pairs = []
    for job_runs in by_job.values():
        job_runs.sort(key=lambda run: run.started)
        pairs += [(a, b) for a, b in itertools.pairwise(job_runs) if b.started < a.last_seen]
    return pairs


@pytest.mark.slow
def test_a_worker_host_cut_off_for_a_minute_runs_nothing_twice_at_once_and_serves_again_when_back(
    taskapp_cluster: TaskappCluster, tmp_path: Path
) -> None:
    world = taskapp_cluster
    record = ExecutionRecord(tmp_path / "record")
    # Runs of a second, ticking in the record while they hold: a run cut off is seen to stop.
    hold = tmp_path / "hold"
    hold.touch()
    ids = submit_through(world, world.gateways, record.payload(hold), 600)
    victim = world.workers[1]
    worker_main = victim.processes["worker"].pid
    victim_pids = set(victim.pids())
    wait_for(lambda: {run.pid for run in record.runs()} & victim_pids, 60, f"{victim.name} to run jobs")
    wait_for(lambda: len(record.runs()) >= 6, 60, "every worker to run jobs")
    victim.cut()
    cut = time.time()

    def victims_runs_stopped() -> bool:
        """Its worker stops each run it cannot renew the lease of: they tick no more."""
        return all(run.last_seen < time.time() - 1 for run in record.runs() if run.pid in victim_pids)

    wait_for(victims_runs_stopped, LEASE, f"{victim.name} to stop its runs")
    hold.unlink()  # the other hosts drain, the cut-off host's jobs among them once the scheduler rescued them
    wait_for(lambda: time.time() - cut >= 60, 70, "a minute of the cut", interval=1)
    victim.heal()

    wait_for(
        lambda: world.count(jobs_table.c.state == "SUCCEEDED") == 600, 120, "every job to succeed", interval=1
    )
    assert overlapping(record.runs()) == []
    assert record.finished() == dict.fromkeys(ids, 1), "each handler finished once"

    more = submit_through(world, [world.gateways[0]], record.payload(seconds=0.05), 100)
    wait_for(lambda: all(record.finished().get(job_id) for job_id in more), 60, "the next jobs to run")
    assert victim.processes["worker"].pid == worker_main and victim.processes["worker"].poll() is None
    served = {run.pid for run in record.runs() if run.job_id in set(more)} & set(victim.pids())
    assert served, f"{victim.name} serves again, with no restart"


def submits_answered(gateway: Host, code: str = "OK") -> float:
    """SubmitJob calls the gateway answered with `code`, from its /metrics."""
    text = httpx.get(f"http://{gateway.address}:9464/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "taskapp_gateway_rpcs_total"
        and sample.labels == {"method": "SubmitJob", "code": code}
    )


@pytest.mark.slow
def test_a_client_given_both_gateways_carries_on_through_the_other_when_one_is_cut_off(
    taskapp_cluster: TaskappCluster, tmp_path: Path
) -> None:
    world = taskapp_cluster
    record = ExecutionRecord(tmp_path / "record")
    first, second = world.gateways
    address = ",".join(f"{gateway.address}:{GRPC_PORT}" for gateway in world.gateways)
    answered: list[str] = []
    served_before_cut: dict[str, float] = {}

    answered_at_cut: list[int] = []

    def cut_after_500() -> None:
        wait_for(lambda: len(answered) >= 500, 60, "500 answers", interval=0.001)
        served_before_cut.update({gateway.name: submits_answered(gateway) for gateway in world.gateways})
        first.cut()
        answered_at_cut.append(len(answered))

    cutter = threading.Thread(target=cut_after_500)
    cutter.start()
    with JobClient(address, token=TOKEN, timeout=10) as client:
        for _ in range(2_000):
            answered.append(client.submit("recorded", record.payload()).job_id)
    cutter.join()

    assert all(served_before_cut.values()), f"both gateways answered before the cut: {served_before_cut}"
    # The calls after the cut, and the one under way then: the other gateway answered each.
    assert submits_answered(second) - served_before_cut[second.name] >= 2_000 - answered_at_cut[0]
    wait_for(
        lambda: world.count(jobs_table.c.state == "SUCCEEDED") == 2_000, 120, "every job to run", interval=1
    )
    engine = create_db_engine(world.database.url)
    try:
        with engine.connect() as conn:
            stored = set(conn.execute(sa.select(jobs_table.c.job_id)).scalars())
    finally:
        engine.dispose()
    assert stored == set(answered) and len(answered) == 2_000
    assert record.finished() == dict.fromkeys(answered, 1), "each handler finished once"


@pytest.mark.slow
def test_the_database_primary_lost_and_its_standby_promoted_every_process_carries_on_and_no_job_is_lost(
    make_cluster: Callable[..., TaskappCluster], tmp_path: Path
) -> None:
    world = make_cluster(standby=True)
    assert world.standby is not None
    record = ExecutionRecord(tmp_path / "record")
    processes = {(host.name, name): process for host in world.cluster.hosts.values()
                 for name, process in host.processes.items()}  # fmt: skip
    address = ",".join(f"{gateway.address}:{GRPC_PORT}" for gateway in world.gateways)
    accepted: list[str] = []
    answered_at: list[float] = []
    refused: list[tuple[float, str]] = []
    promoted = threading.Event()

    def fail_over() -> None:
        wait_for(lambda: len(accepted) >= 300, 60, "300 submits", interval=0.001)
        world.cluster.hosts["db"].kill()
        lost = time.time()
        refused.append((lost, "primary lost"))
        time.sleep(1)  # the failover manager notices; an operator would take longer
        world.standby.promote()  # type: ignore[union-attr]
        refused.append((time.time(), f"standby promoted {time.time() - lost:.1f} s after"))
        promoted.set()

    failing_over = threading.Thread(target=fail_over)
    failing_over.start()
    with JobClient(address, token=TOKEN, timeout=10) as client:
        while not promoted.is_set() or len(accepted) < 900:
            try:
                accepted.append(client.submit("recorded", record.payload()).job_id)
                answered_at.append(time.time())
            except JobServiceError as exc:
                refused.append((time.time(), exc.code))
                time.sleep(0.05)
    failing_over.join()

    # The gateways answered UNAVAILABLE while no database took writes, and the client tried again; what its
    # caller saw is a pause, or an UNAVAILABLE once the client's tries ran out. Nothing else.
    codes = {code for _, code in refused if code.isupper()}
    assert codes <= {"UNAVAILABLE"}, refused
    unavailable = [at for at, code in refused if code == "UNAVAILABLE"]
    assert sum(submits_answered(gateway, "UNAVAILABLE") for gateway in world.gateways) > 0
    assert sum(submits_answered(gateway, "INTERNAL") for gateway in world.gateways) == 0
    pause = max(later - earlier for earlier, later in itertools.pairwise(answered_at))
    print(f"failover: {refused[:2]}; longest pause between answers {pause:.1f} s; {len(unavailable)} refused")
    assert pause < 15

    wait_for(
        lambda: world.count(jobs_table.c.state == "SUCCEEDED") == world.count() >= len(accepted),
        120,
        "every job to run",
        interval=1,
    )
    engine = create_db_engine(world.env["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            stored = set(conn.execute(sa.select(jobs_table.c.job_id)).scalars())
    finally:
        engine.dispose()
    # A submit refused after the primary had replicated its commit made its job all the same: a caller that
    # tries again with the same job id finds it.
    assert set(accepted) <= stored and len(stored - set(accepted)) <= len(unavailable)
    assert record.finished() == dict.fromkeys(stored, 1), "every job ran, once"
    restarted = [key for key, process in processes.items() if key[0] != "db" and process.poll() is not None]
    assert restarted == [], "no process was restarted"

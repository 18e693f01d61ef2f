"""taskapp on many hosts: network-namespace hosts (bench/cluster.py) for the database, the broker, two
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
import psycopg
import pytest
import redis
import sqlalchemy as sa

from bench.cluster import Cluster, Host
from bench.servers import OwnPostgres, OwnRedis
from grpc_gateway.client import JobClient, JobServiceError
from grpc_gateway.v1 import jobs_pb2, jobs_pb2_grpc
from taskapp.migrate import upgrade
from taskapp.store.tables import jobs_table
from tests.helpers import (
    BIN,
    ROOT,
    ExecutionRecord,
    Run,
    count_rows,
    metric_total,
    procfile,
    stored_job_ids,
    wait_for,
)

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

    @property
    def gateways_address(self) -> str:
        """Every gateway, for a client: `ip:port,ip:port`."""
        return ",".join(f"{gateway.address}:{GRPC_PORT}" for gateway in self.gateways)

    def count(self, *where: sa.ColumnElement[bool]) -> int:
        return count_rows(self.env["DATABASE_URL"], jobs_table, *where)

    def stored_jobs(self) -> set[str]:
        return stored_job_ids(self.env["DATABASE_URL"])


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., TaskappCluster]]:
    """`make_cluster(workers=3, schedulers=2, standby=False, sentinel=False)`: the database host, the broker host,
    two gateway hosts, the worker hosts and the scheduler hosts, every process started. (A test that needs no
    more asks for fewer: each taskapp process costs seconds of CPU to start, on the two cores CI shares.) With `standby`, a second database host streams
    the first one's WAL, synchronously (a commit waits for the standby), and DATABASE_URL names both, read-write
    first. With `sentinel`, the broker has a replica on a host of its own, three Sentinels watch them (on the
    broker's host, the replica's, and a third), and REDIS_URL names the Sentinels."""
    made: list[tuple[Cluster, list[OwnPostgres]]] = []

    def make(
        workers: int = 3, schedulers: int = 2, standby: bool = False, sentinel: bool = False
    ) -> TaskappCluster:
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
        redis_url = broker.url
        if sentinel:
            redis_url = start_sentinels(cluster, broker, tmp_path)
        env = {
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": os.environ.get("HOME", str(tmp_path)),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
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
                TASKAPP_HTTP_ADDR=f"{host.address}:8080",
            )
            world.gateways.append(host)
        for number in range(1, workers + 1):
            host = cluster.add_host(f"worker-{number}")
            world.start(
                host,
                "worker",
                TASKAPP_WORKER_CONCURRENCY="2",
                TASKAPP_WORKER_METRICS_ADDR=f"{host.address}:9465",
            )
            world.workers.append(host)
        for number in range(1, schedulers + 1):
            host = cluster.add_host(f"scheduler-{number}")
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


#: The name Sentinel knows the broker's primary by.
MASTER = "jobs"


def start_sentinels(cluster: Cluster, primary: OwnRedis, workdir: Path) -> str:
    """A replica of `primary` on a host of its own and three Sentinels (quorum 2, a primary is down after 1 s
    without an answer); returns the `sentinel://` REDIS_URL."""
    replica_host = cluster.add_host("broker-replica")
    replica_host.start(
        "redis",
        ["redis-server", "--port", "6379", "--bind", replica_host.address, "--protected-mode", "no",
         "--save", "", "--appendonly", "no", "--dir", str(workdir), "--replicaof", primary.address, "6379"],
        {"PATH": os.environ["PATH"]},
    )  # fmt: skip
    sentinel_hosts = [cluster.hosts["broker"], replica_host, cluster.add_host("sentinel-3")]
    for host in sentinel_hosts:
        config = workdir / f"{host.name}-sentinel.conf"  # Sentinel rewrites its file: one each
        config.write_text(
            f"port 26379\nbind {host.address}\nprotected-mode no\ndir {workdir}\n"
            f"sentinel monitor {MASTER} {primary.address} 6379 2\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 10000\n"
        )
        host.start("sentinel", ["redis-server", str(config), "--sentinel"], {"PATH": os.environ["PATH"]})
    replica = redis.Redis(replica_host.address, 6379, socket_timeout=2)
    wait_for(lambda: replica.info("replication")["master_link_status"] == "up", 30, "the replica to follow")

    def knows_the_others(watcher: redis.Redis) -> bool:
        sentinels = watcher.execute_command("SENTINEL", "SENTINELS", MASTER)
        return len(sentinels) == 2 and bool(watcher.execute_command("SENTINEL", "REPLICAS", MASTER))

    for host in sentinel_hosts:
        watcher = redis.Redis(host.address, 26379, socket_timeout=2)
        wait_for(lambda: knows_the_others(watcher), 30, f"{host.name}'s Sentinel to know the others")  # noqa: B023
    return "sentinel://" + ",".join(f"{host.address}:26379" for host in sentinel_hosts) + f"/{MASTER}/0"


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
    make_cluster: Callable[..., TaskappCluster], tmp_path: Path
) -> None:
    world = make_cluster(workers=2, schedulers=1)
    record = ExecutionRecord(tmp_path / "record")
    # Runs that hold while `hold` exists, ticking in the record: a run cut off is seen to stop.
    hold = tmp_path / "hold"
    hold.touch()
    ids = submit_through(world, world.gateways, record.payload(hold), 600)
    victim = world.workers[1]
    worker_main = victim.processes["worker"].pid
    victim_pids = set(victim.pids())

    def victim_holds() -> int:
        return sum(1 for run in record.runs() if run.pid in victim_pids and not run.finished)

    wait_for(lambda: victim_holds() == 2, 60, f"{victim.name} to run two jobs")
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
    """SubmitJob calls the gateway answered with `code`, from its /metrics (which must answer within 5 s, failed
    over or not)."""
    address = f"{gateway.address}:9464"
    return metric_total(address, "taskapp_gateway_rpcs_total", timeout=5, method="SubmitJob", code=code)


@pytest.mark.slow
def test_a_client_given_both_gateways_carries_on_through_the_other_when_one_is_cut_off(
    make_cluster: Callable[..., TaskappCluster], tmp_path: Path
) -> None:
    world = make_cluster(workers=1, schedulers=1)
    record = ExecutionRecord(tmp_path / "record")
    first, second = world.gateways
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
    with JobClient(world.gateways_address, token=TOKEN, timeout=10) as client:
        for _ in range(2_000):
            answered.append(client.submit("recorded", record.payload()).job_id)
    cutter.join()

    assert all(served_before_cut.values()), f"both gateways answered before the cut: {served_before_cut}"
    # The calls after the cut, and the one under way then: the other gateway answered each.
    assert submits_answered(second) - served_before_cut[second.name] >= 2_000 - answered_at_cut[0]
    wait_for(
        lambda: world.count(jobs_table.c.state == "SUCCEEDED") == 2_000, 120, "every job to run", interval=1
    )
    assert world.stored_jobs() == set(answered) and len(answered) == 2_000
    assert record.finished() == dict.fromkeys(answered, 1), "each handler finished once"


@dataclass
class Failover:
    """What a stream of submits through both gateways saw while `fail_over` ran beneath it."""

    accepted: list[str] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)
    #: (when, the error code the caller saw) for each refused submit, and the failover's own marks.
    refused: list[tuple[float, str]] = field(default_factory=list)

    @property
    def unavailable(self) -> int:
        return sum(code == "UNAVAILABLE" for _, code in self.refused)

    @property
    def longest_pause(self) -> float:
        return max(later - earlier for earlier, later in itertools.pairwise(self.answered_at))


def submit_through_a_failover(
    world: TaskappCluster, record: ExecutionRecord, lost: Host, fail_over: Callable[[], None]
) -> Failover:
    """Submit one job at a time from a client given both gateways; once 300 are in, kill the host `lost` and
    call `fail_over` (it returns once the service's primary is the new one); keep submitting until 600 are in.
    Then wait until every job stored has run, and check that no process but the lost host's was restarted."""
    processes = {(host.name, name): process for host in world.cluster.hosts.values()
                 for name, process in host.processes.items() if host is not lost}  # fmt: skip
    seen = Failover()
    done = threading.Event()

    def lose_and_fail_over() -> None:
        wait_for(lambda: len(seen.accepted) >= 300, 60, "300 submits", interval=0.001)
        lost.kill()
        killed = time.time()
        seen.refused.append((killed, f"{lost.name} lost"))
        fail_over()
        seen.refused.append((time.time(), f"failed over {time.time() - killed:.1f} s after"))
        done.set()

    failing_over = threading.Thread(target=lose_and_fail_over)
    failing_over.start()
    with JobClient(world.gateways_address, token=TOKEN, timeout=10) as client:
        while not done.is_set() or len(seen.accepted) < 600:
            try:
                seen.accepted.append(client.submit("recorded", record.payload()).job_id)
                seen.answered_at.append(time.time())
            except JobServiceError as exc:
                seen.refused.append((time.time(), exc.code))
                time.sleep(0.05)
    failing_over.join()
    print(
        f"{seen.refused[:2]}; longest pause between answers {seen.longest_pause:.1f} s; {seen.unavailable} refused"
    )

    wait_for(
        lambda: world.count(jobs_table.c.state == "SUCCEEDED") == world.count() >= len(seen.accepted),
        120,
        "every job to run",
        interval=1,
    )
    restarted = [key for key, process in processes.items() if process.poll() is not None]
    assert restarted == [], "no process was restarted"
    return seen


@pytest.mark.slow
def test_the_database_primary_lost_and_its_standby_promoted_every_process_carries_on_and_no_job_is_lost(
    make_cluster: Callable[..., TaskappCluster], tmp_path: Path
) -> None:
    world = make_cluster(workers=1, schedulers=1, standby=True)
    standby = world.standby
    assert standby is not None
    record = ExecutionRecord(tmp_path / "record")

    def promote() -> None:
        time.sleep(1)  # the failover manager notices; an operator would take longer
        standby.promote()

    seen = submit_through_a_failover(world, record, world.cluster.hosts["db"], promote)

    # The gateways answered UNAVAILABLE while no database took writes, and the client tried again; what its
    # caller saw is a pause, or an UNAVAILABLE once the client's tries ran out. Nothing else.
    assert {code for _, code in seen.refused if code.isupper()} <= {"UNAVAILABLE"}, seen.refused
    assert sum(submits_answered(gateway, "UNAVAILABLE") for gateway in world.gateways) > 0
    assert sum(submits_answered(gateway, "INTERNAL") for gateway in world.gateways) == 0
    assert seen.longest_pause < 15
    stored = world.stored_jobs()
    # A submit refused after the primary had replicated its commit made its job all the same: a caller that
    # tries again with the same job id finds it.
    assert set(seen.accepted) <= stored and len(stored - set(seen.accepted)) <= seen.unavailable
    assert record.finished() == dict.fromkeys(stored, 1), "every job ran, once"


@pytest.mark.slow
def test_the_redis_primary_lost_sentinel_promotes_its_replica_every_process_follows_and_no_job_is_lost(
    make_cluster: Callable[..., TaskappCluster], tmp_path: Path
) -> None:
    world = make_cluster(workers=1, schedulers=1, sentinel=True)
    record = ExecutionRecord(tmp_path / "record")
    replica = world.cluster.hosts["broker-replica"]
    sentinel = redis.Redis(world.cluster.hosts["sentinel-3"].address, 26379, socket_timeout=2)

    def wait_for_sentinel() -> None:
        wait_for(
            lambda: (
                sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)[0].decode()
                == replica.address
            ),
            30,
            "Sentinel to promote the replica",
            interval=0.1,
        )

    seen = submit_through_a_failover(world, record, world.cluster.hosts["broker"], wait_for_sentinel)

    assert {code for _, code in seen.refused if code.isupper()} <= {"UNAVAILABLE"}, seen.refused
    assert sum(submits_answered(gateway, "INTERNAL") for gateway in world.gateways) == 0
    assert seen.longest_pause < 15
    stored = world.stored_jobs()
    assert set(seen.accepted) <= stored and len(stored - set(seen.accepted)) <= seen.unavailable
    assert record.finished() == dict.fromkeys(stored, 1), "every job ran, once"

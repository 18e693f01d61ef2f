"""The measurements: each phase drives the real processes from outside, as a client would, and returns figures.

Rates are jobs (or messages) per second of wall time; latencies are in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import psycopg
from celery import Celery
from rich.progress import Progress

from bench import raw_celery
from bench.env import World, wait_until
from grpc_gateway.client import CHANNEL_OPTIONS, channel_target
from grpc_gateway.v1 import jobs_pb2, jobs_pb2_grpc

QUEUE = "default"
#: The queues a worker consumes, as the Procfile says.
WORKER_QUEUES = "critical,high,default,low"
#: How often a drain checks whether it is done: often enough not to blur the rate, rarely enough to be free.
POLL_SECONDS = 0.02
#: Callers at once for SubmitJobs of many jobs: P1's batch measure, and the fills before drains.
BATCH_CONCURRENCY = 4


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


Advance = Callable[[int], None]


@contextlib.contextmanager
def progress_of(progress: Progress, label: str, total: int | None) -> Iterator[Advance]:
    """A bar for a phase (a spinner when its length is unknown); the phase calls the given function as it goes."""
    task = progress.add_task(label, total=total)
    yield lambda done: progress.advance(task, done)
    progress.update(task, total=total or 1, completed=total or 1)


def pause_consuming(app: Celery, workers: int = 1) -> None:
    """The workers stop taking from the queue, so it can be filled first and then drained at full speed."""
    replies = app.control.cancel_consumer(QUEUE, reply=True, limit=workers, timeout=5)
    if len(replies) != workers:
        raise RuntimeError(f"{len(replies)} of {workers} worker(s) stopped consuming")


def alternating_publish(
    raw_app: Celery, address: str, count: int, concurrency: int, rounds: int, advance: Advance
) -> tuple[float, float]:
    """P1's two measures in alternating rounds, `count` calls of each in all: `send_task` in a loop from one
    thread, and SubmitJob from `concurrency` callers. Returns (send_task calls, jobs created) per second. Measured
    minutes apart, the two differed by the machine's drift: in one run in four the gateway was ~12 % slower than
    in the runs before, raw `send_task` as fast as ever."""
    raw_app.send_task(raw_celery.NOOP, queue=QUEUE)  # connected before the clock starts
    per_round = max(1, count // rounds)
    raw_seconds = submit_seconds = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(per_round):
            raw_app.send_task(raw_celery.NOOP, queue=QUEUE)
        raw_seconds += time.perf_counter() - started
        advance(per_round)
        submit_seconds += per_round / submit_jobs(address, per_round, concurrency, advance)
    done = per_round * rounds
    return done / raw_seconds, done / submit_seconds


def drain(
    app: Celery,
    world: World,
    done: Callable[[], bool],
    count: int,
    label: str,
    progress: Progress,
    workers: int = 1,
    polled: Callable[[], None] = lambda: None,
) -> float:
    """Let the paused workers at their full queue in `world`'s Redis, and time them until `done` says all
    `count` are through (`drain_seconds`)."""
    with progress_of(progress, label, None):
        return count / drain_seconds(app, world, done, label, workers, polled)


def drain_seconds(
    app: Celery,
    world: World,
    done: Callable[[], bool],
    label: str,
    workers: int = 1,
    polled: Callable[[], None] = lambda: None,
) -> float:
    """Let the paused workers at their full queue in `world`'s Redis: seconds from the first message taken
    until `done`. Not from the moment they are let at it: a worker takes its first message only once its
    pending BRPOP on its other queues times out (kombu's is 1 s), and those 0.5-0.9 s of nothing were a fifth of
    a drain of 2,000 messages, more of raw Celery's quicker one than of taskapp's. `polled` is called for each
    LLEN the wait for the first message makes."""
    client = world.redis()
    filled = client.llen(QUEUE)

    def first_taken() -> bool:
        polled()
        return bool(client.llen(QUEUE) < filled)

    # `limit`: back as soon as every worker answers, not after the whole timeout.
    app.control.add_consumer(QUEUE, reply=True, limit=workers, timeout=5)
    wait_until(first_taken, 10, f"{label}: the first message taken", interval=0.001)
    started = time.perf_counter()
    wait_until(done, 600, label, interval=POLL_SECONDS)
    return time.perf_counter() - started


def alternating_drains(
    raw_app: Celery,
    raw_world: World,
    app: Celery,
    world: World,
    address: str,
    count: int,
    rounds: int,
    batch_size: int,
    advance: Advance,
) -> tuple[float, float]:
    """P2's two drains in alternating rounds, `count` tasks of each in all: raw Celery's noop worker (controlled
    through `raw_app`, on `raw_world`'s Redis database) and taskapp's (through `app`, on `world`'s). Each round
    fills both paused queues, untimed (taskapp's with SubmitJobs of `batch_size`), then lets each worker at its
    own in turn, raw Celery's first in even rounds and taskapp's in odd ones. Returns (raw, taskapp) tasks per
    second. Measured a minute apart, the two drains differed by the machine's drift: raw Celery's alone
    623-907/s from run to run."""
    batches = max(1, count // rounds // batch_size)
    per_round = batches * batch_size
    raw_seconds = taskapp_seconds = 0.0
    for round_number in range(rounds):
        pause_consuming(raw_app)
        pause_consuming(app)
        for _ in range(per_round):
            raw_app.send_task(raw_celery.NOOP, queue=QUEUE)
        submit_batches(address, batches, batch_size, concurrency=BATCH_CONCURRENCY, advance=lambda _: None)
        total = job_count(world)
        raw_first = round_number % 2 == 0
        for raw_turn in (raw_first, not raw_first):
            if raw_turn:
                raw_seconds += drain_seconds(
                    raw_app, raw_world, lambda: raw_drained(raw_world), "raw Celery: drain"
                )
            else:
                taskapp_seconds += drain_seconds(
                    app,
                    world,
                    functools.partial(taskapp_drained, world, total),
                    "taskapp: drain to SUCCEEDED",
                )
            advance(per_round)
    done = rounds * per_round
    return done / raw_seconds, done / taskapp_seconds


def raw_drain_with_status(world: World, app: Celery, count: int, progress: Progress) -> float:
    """Raw Celery writing each task's status to a table by hand (`raw_celery.noop_with_status`): rows made
    QUEUED, the messages published while the worker does not consume, then the drain timed until every row is
    SUCCEEDED."""
    table = raw_celery.STATUS_TABLE
    world.sql(
        f"CREATE TABLE IF NOT EXISTS {table} "
        "(id text PRIMARY KEY, state text NOT NULL, started_at timestamptz, finished_at timestamptz)"
    )
    world.sql(f"TRUNCATE {table}")
    ids = [f"status-{n}" for n in range(count)]
    world.sql(f"INSERT INTO {table} (id, state) SELECT unnest(%s::text[]), 'QUEUED'", (ids,))
    pause_consuming(app)
    for task_id in ids:
        app.send_task(raw_celery.NOOP_WITH_STATUS, task_id=task_id, queue=QUEUE)

    def finished() -> bool:
        return raw_drained(world) and succeeded(world, table) == count

    return drain(app, world, finished, count, "raw Celery + status table: drain", progress)


def raw_drained(world: World) -> bool:
    """The queue and kombu's hash of unacknowledged messages are empty. Two Redis reads, and not proof alone
    that every task has run: kombu pops a message (BRPOP) before it records it as unacknowledged, so for a moment
    the last one is in neither; a drain with a record of its own (a status table, taskapp's jobs) asks it too."""
    client = world.redis()
    pipeline = client.pipeline(transaction=False)
    pipeline.llen(QUEUE)
    pipeline.hlen("unacked")
    waiting, unacked = pipeline.execute()
    return bool(waiting == 0 and unacked == 0)


def succeeded(world: World, table: str = "jobs") -> int:
    """Rows of `table` (taskapp's jobs, or the raw status table) whose state is SUCCEEDED."""
    return int(world.sql(f"SELECT count(*) FROM {table} WHERE state = 'SUCCEEDED'")[0][0])


def taskapp_drained(world: World, total: int) -> bool:
    """Every job SUCCEEDED, asked of SQL only once Redis says the drain is through (a job's message is
    acknowledged after its outcome is committed). Counting a changing table 50 times a second cost PostgreSQL a
    quarter of a core, taken from the drain it measured; raw Celery's check is two Redis reads."""
    return raw_drained(world) and succeeded(world) == total


def job_count(world: World) -> int:
    return int(world.sql("SELECT count(*) FROM jobs")[0][0])


async def _submit_calls(
    address: str,
    count: int,
    concurrency: int,
    request: Callable[[], object],
    method: str,
    per_call: int,
    advance: Advance,
    metadata: tuple[tuple[str, str], ...] = (),
) -> float:
    # As taskapp's clients connect: `address` may name several gateways, comma separated.
    async with grpc.aio.insecure_channel(channel_target(address), options=CHANNEL_OPTIONS) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        call = getattr(stub, method)
        await call(request(), timeout=30, metadata=metadata)  # the connection is up before the clock starts
        calls = itertools.count()

        async def caller() -> None:
            while (n := next(calls)) < count:
                await call(request(), timeout=60, metadata=metadata)
                if n % 100 == 99 or per_call > 1:
                    advance(100 if per_call == 1 else per_call)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return count * per_call / (time.perf_counter() - started)


def submit_jobs(
    address: str, count: int, concurrency: int, advance: Advance, metadata: tuple[tuple[str, str], ...] = ()
) -> float:
    """SubmitJob for `count` noop jobs from `concurrency` callers at once, over one channel to the gateway or
    gateways `address` names: jobs created per second."""

    def request() -> jobs_pb2.SubmitJobRequest:
        return jobs_pb2.SubmitJobRequest(type="noop")

    return asyncio.run(_submit_calls(address, count, concurrency, request, "SubmitJob", 1, advance, metadata))


def submit_jobs_http(address: str, count: int, concurrency: int, advance: Advance) -> float:
    """`submit_jobs` through the HTTP/JSON API (`POST /v1/jobs`), one keep-alive connection per caller: jobs
    created per second. The callers write the request's bytes and read the answer by its Content-Length
    themselves: httpx spent more of the two cores per call than the gateway did (148 calls/s against 783/s
    from Apache's `ab` on the same gateway), and the phase is to measure the gateway."""
    body = b'{"type": "noop"}'
    request = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def submit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(request)
        status = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        answer = await reader.readexactly(length)
        if b" 200 " not in status:
            raise RuntimeError(f"POST /v1/jobs answered {status!r}: {answer!r}")

    async def run() -> float:
        host, port = address.rsplit(":", 1)
        connections = [await asyncio.open_connection(host, int(port)) for _ in range(concurrency)]
        await submit(*connections[0])  # the gateway has answered once before the clock starts
        calls = itertools.count()

        async def caller(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while (n := next(calls)) < count:
                await submit(reader, writer)
                if n % 100 == 99:
                    advance(100)

        started = time.perf_counter()
        await asyncio.gather(*(caller(*connection) for connection in connections))
        seconds = time.perf_counter() - started
        for _, writer in connections:
            writer.close()
        return count / seconds

    return asyncio.run(run())


def submit_batches(address: str, batches: int, batch_size: int, concurrency: int, advance: Advance) -> float:
    """SubmitJobs with `batch_size` noop jobs per call: jobs created per second."""

    def request() -> jobs_pb2.SubmitJobsRequest:
        return jobs_pb2.SubmitJobsRequest(jobs=[jobs_pb2.SubmitJobRequest(type="noop")] * batch_size)

    return asyncio.run(
        _submit_calls(address, batches, concurrency, request, "SubmitJobs", batch_size, advance)
    )


def limit_other_types(address: str) -> None:
    """What an operator sets on job types other than the benchmark's `noop`: a limit and a rate on `echo`, a
    pause on `sleep` (they make every claim of a `noop` job look for controls of its type and queue)."""
    with grpc.insecure_channel(address) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        stub.SetTypeLimit(jobs_pb2.SetTypeLimitRequest(type="echo", max_running=5, rate=100), timeout=10)
        stub.PauseType(jobs_pb2.PauseTypeRequest(type="sleep"), timeout=10)


def clear_other_types(address: str) -> None:
    """Undo `limit_other_types`: a control left with no limit, rate or pause is removed."""
    with grpc.insecure_channel(address) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        stub.SetTypeLimit(jobs_pb2.SetTypeLimitRequest(type="echo"), timeout=10)
        stub.ResumeType(jobs_pb2.ResumeTypeRequest(type="sleep"), timeout=10)


def alternating_limits(
    app: Celery, world: World, address: str, batches: int, batch_size: int, rounds: int, advance: Advance
) -> tuple[float, float]:
    """P2's drain without flow controls and with those of `limit_other_types`, in alternating rounds,
    `batches` SubmitJobs of `batch_size` for each in all: each drain's queue filled while the worker does not
    consume, then drained to SUCCEEDED. Returns (without, with) jobs per second. Measured one after the other,
    the ratio moved with the machine (0.91-1.29 in five runs on one machine)."""
    per_round = max(1, batches // rounds)
    seconds = {False: 0.0, True: 0.0}
    for round_number in range(rounds):
        for limited in (False, True) if round_number % 2 == 0 else (True, False):
            (limit_other_types if limited else clear_other_types)(address)
            pause_consuming(app)
            submit_batches(
                address, per_round, batch_size, concurrency=BATCH_CONCURRENCY, advance=lambda _: None
            )
            total = job_count(world)
            label = "taskapp: drain" + (", limits on other types" if limited else "")
            seconds[limited] += drain_seconds(
                app, world, functools.partial(taskapp_drained, world, total), label
            )
            advance(per_round * batch_size)
    jobs = rounds * per_round * batch_size
    return jobs / seconds[False], jobs / seconds[True]


async def _steady_submits(
    address: str, count: int, per_second: float, advance: Advance, prefix: str
) -> dict[str, float]:
    """Submit at a steady rate (each call on its own, so a slow one does not delay the next); job id -> the
    wall-clock time it was sent."""
    sent: dict[str, float] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        await stub.SubmitJob(jobs_pb2.SubmitJobRequest(type="noop"), timeout=30)

        async def one(n: int) -> None:
            job_id = f"{prefix}{n}"
            at = time.time()
            await stub.SubmitJob(jobs_pb2.SubmitJobRequest(type="noop", job_id=job_id), timeout=30)
            sent[job_id] = at
            advance(1)

        loop = asyncio.get_running_loop()
        start = loop.time()
        calls = []
        for n in range(count):
            await asyncio.sleep(max(0.0, start + n / per_second - loop.time()))
            calls.append(asyncio.create_task(one(n)))
        await asyncio.gather(*calls)
    return sent


#: Jobs sent at the steady rate before a latency measure, so it sees warm processes and connections.
WARM_UP = 100


def raw_latency(world: World, app: Celery, count: int, per_second: float, advance: Advance) -> dict[str, Any]:
    """Raw Celery's own floor for the same measure: `send_task` at a steady rate -> the task starting, with
    its stages where raw Celery has them (the message reaching the worker, the task starting)."""
    client = world.redis()

    def steady_sends(count: int, prefix: str, advance: Advance) -> dict[str, float]:
        sent: dict[str, float] = {}
        start = time.monotonic()
        for n in range(count):
            time.sleep(max(0.0, start + n / per_second - time.monotonic()))
            sent[f"{prefix}{n}"] = time.time()
            app.send_task(raw_celery.STAMP, task_id=f"{prefix}{n}", queue=QUEUE)
            advance(1)
        wait_until(lambda: client.hlen(raw_celery.STARTED) >= len(sent), 120, "raw tasks to start")
        return sent

    steady_sends(WARM_UP, "warm-up-", lambda n: None)
    client.delete(raw_celery.STARTED)
    sent = steady_sends(count, "latency-", advance)
    stamps = {
        text(key): [float(stamp) for stamp in text(value).split()]
        for key, value in client.hgetall(raw_celery.STARTED).items()
    }
    journeys = [
        {"sent": at, "delivered": delivered, "started": started, "measured": started}
        for task_id, at in sent.items()
        for delivered, started in [stamps[task_id]]
    ]
    return latency_figures(journeys, RAW_STAGES)


#: The stages of a job's way to its run: (name, from stamp, to stamp). Those up to `started` make up the
#: measured latency; the claim comes after (SQL's started_at is read as it begins).
STAGES = (
    ("to the gateway", "sent", "received"),
    ("validate and wait to be written", "received", "writing"),
    ("insert and commit", "writing", "committed"),
    ("publish", "committed", "published"),
    ("in the queue", "published", "delivered"),
    ("to a pool process", "delivered", "started"),
)
CLAIM_STAGE = ("claim (after started_at)", "started", "claimed")
RAW_STAGES = (
    ("send and queue", "sent", "delivered"),
    ("to a pool process", "delivered", "started"),
)


Stage = tuple[str, str, str]

#: The stamps the processes write of each job (`sent` is the benchmark's own).
TRACED = {end for _, _, end in (*STAGES, CLAIM_STAGE)} - {"sent"}


def latency_figures(
    journeys: list[dict[str, float]], stages: tuple[Stage, ...], after: tuple[Stage, ...] = ()
) -> dict[str, Any]:
    """p50/p95/p99 of the measured latency (sent -> `measured`, read apart from the stamps), in ms; each
    stage's p50, p99, mean and how many jobs had both its stamps; and the sum of the stages' means, which must
    account for the measured mean. `after`: stages reported too, but past the measured end."""
    totals = [(journey["measured"] - journey["sent"]) * 1_000 for journey in journeys]
    figures: dict[str, Any] = quantiles(totals)
    figures["mean"] = statistics.mean(totals)
    figures["stages"] = {}
    for name, start, end in (*stages, *after):
        spans = [(journey[end] - journey[start]) * 1_000 for journey in journeys if end in journey]
        if spans:
            figures["stages"][name] = {
                "p50": percentile(spans, 50),
                "p99": percentile(spans, 99),
                "mean": statistics.mean(spans),
                "jobs": len(spans),
            }
    figures["stages_mean_sum"] = sum(
        figures["stages"][name]["mean"] for name, _, _ in stages if name in figures["stages"]
    )
    return figures


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def quantiles(latencies: list[float]) -> dict[str, float]:
    return {f"p{q}": percentile(latencies, q) for q in (50, 95, 99)}


def latency_to_running(
    world: World, address: str, count: int, per_second: float, advance: Advance
) -> dict[str, Any]:
    """Submit → RUNNING (the claim's time in SQL) at a steady rate: p50, p95, p99 in milliseconds, and each
    stage from the processes' stamps (`taskapp.start_latency`'s trace file). What earlier phases wrote is
    flushed first (CHECKPOINT), and a warm-up runs at the same rate. Notes whether an autovacuum or a
    checkpoint ran meanwhile."""
    world.sql("CHECKPOINT")
    started = "SELECT count(*) FROM jobs WHERE job_id LIKE '{}%' AND started_at IS NOT NULL"
    asyncio.run(_steady_submits(address, WARM_UP, per_second, lambda n: None, "warm-up-"))
    wait_until(
        lambda: world.sql(started.format("warm-up-"))[0][0] == WARM_UP, 120, "the warm-up jobs to start"
    )
    with PostgresActivity(world) as activity, DiskProbe(world) as disk:
        sent = asyncio.run(_steady_submits(address, count, per_second, advance, "latency-"))
        wait_until(
            lambda: world.sql(started.format("latency-"))[0][0] == count, 120, "the latency jobs to start"
        )
    # A process writes its stamps after the steps they time (the claim's after its commit): the last jobs' lines
    # may come after SQL shows them started. Read them once every job has them all.
    traced: dict[str, dict[str, float]] = {}

    def all_traced() -> bool:
        traced.update(trace_stamps(world.trace_file))
        latency_jobs = [stamps for job_id, stamps in traced.items() if job_id.startswith("latency-")]
        return len(latency_jobs) == count and all(stamps.keys() >= TRACED for stamps in latency_jobs)

    wait_until(all_traced, 10, "every latency job's stamps in the trace file")
    journeys = []
    for job_id, started_at in world.sql("SELECT job_id, started_at FROM jobs WHERE job_id LIKE 'latency-%'"):
        # The stages end at the pool process's own stamp; the latency, at the claim's started_at in SQL.
        journeys.append({**traced.get(job_id, {}), "sent": sent[job_id], "measured": started_at.timestamp()})
    figures = latency_figures(journeys, STAGES, after=(CLAIM_STAGE,))
    figures["postgres"] = activity.seen
    figures["disk"] = disk.seen
    return figures


def trace_stamps(path: Path) -> dict[str, dict[str, float]]:
    """Job id -> every stamp the processes wrote for it."""
    stamps: dict[str, dict[str, float]] = {}
    with path.open() as lines:
        for line in lines:
            record = json.loads(line)
            stamps.setdefault(record.pop("job_id"), {}).update(record)
    return stamps


class PostgresActivity:
    """Watches, on a thread, whether an autovacuum or a checkpoint runs while a measure does: either would
    take the cores the measure shares with it."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.seen: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> PostgresActivity:
        self._checkpoints = self._checkpoint_count()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seen["checkpoints"] = self._checkpoint_count() - self._checkpoints

    def _checkpoint_count(self) -> int:
        return int(self.world.sql("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")[0][0])

    def _watch(self) -> None:
        vacuums: set[str] = set()
        with psycopg.connect(self.world.pg_admin, autocommit=True) as connection:
            while not self._stop.wait(0.1):
                for (query,) in connection.execute(
                    "SELECT query FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
                ).fetchall():
                    vacuums.add(query)
        self.seen["autovacuums"] = sorted(vacuums)


class DiskProbe:
    """Times a small write and its fdatasync every 20 ms, on a thread, on the disk that holds PostgreSQL's WAL
    (from the run's own directory, if it is on that disk): every commit waits for such a sync, so a sync that
    stalls (virtual disks do, for tens of milliseconds) holds up every job being written or claimed then,
    whatever its stage. Raw Celery writes nothing to disk."""

    EVERY_SECONDS = 0.02
    STALL_MS = 20.0

    def __init__(self, world: World) -> None:
        self.world = world
        self.seen: dict[str, Any] = {"measured": False}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True)

    def __enter__(self) -> DiskProbe:
        wal = Path(self.world.sql("SHOW data_directory")[0][0]) / "pg_wal"
        try:
            same_disk = os.stat(wal.resolve()).st_dev == os.stat(self.world.workdir).st_dev
        except OSError as exc:  # PostgreSQL on another host, or its directory not readable by this user
            self.seen["why_not"] = f"cannot see {wal}: {exc.strerror}"
            return self
        if not same_disk:
            self.seen["why_not"] = f"{self.world.workdir} is not on the disk of {wal}"
            return self
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _probe(self) -> None:
        path = self.world.workdir / "fsync-probe"
        block = b"\0" * 8192
        syncs: list[float] = []
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while not self._stop.wait(self.EVERY_SECONDS):
                os.pwrite(descriptor, block, 0)
                began = time.perf_counter()
                os.fdatasync(descriptor)
                syncs.append((time.perf_counter() - began) * 1_000)
        finally:
            os.close(descriptor)
            path.unlink()
        self.seen = {
            "measured": True,
            "syncs": len(syncs),
            "p50": percentile(syncs, 50) if syncs else 0.0,
            "worst": max(syncs, default=0.0),
            "stalls": sum(1 for sync in syncs if sync > self.STALL_MS),
        }


FILL_ROWS = """
INSERT INTO jobs (job_id, type, priority, state, payload, attempts, max_attempts, last_error, timeout_seconds,
                  fingerprint, created_at, updated_at, scheduled_at, started_at, finished_at, worker,
                  published_at, progress_message, labels)
SELECT 'row-' || g,
       (ARRAY['echo', 'noop', 'sleep', 'fail'])[1 + g % 4],
       (ARRAY['low', 'default', 'high', 'critical'])[1 + (g / 4) % 4],
       CASE WHEN g % 50 = 0 THEN 'FAILED' WHEN g % 97 = 0 THEN 'QUEUED' ELSE 'SUCCEEDED' END,
       jsonb_build_object('n', g), 1, 3, '', 300, md5(g::text),
       ts, ts, ts, ts, ts, 'bench@host', ts, '',
       jsonb_build_object('env', (ARRAY['prod', 'staging', 'dev', 'test'])[1 + g % 4], 'team', 't' || g % 10)
FROM generate_series(%(start)s, %(stop)s) AS g,
     LATERAL (SELECT now() - make_interval(secs => %(stop)s - g) AS ts) AS t
"""


def fill_rows(world: World, rows: int, progress: Progress) -> None:
    """Bring `jobs` to `rows` rows with plain SQL (a mix of types, priorities and states), then ANALYZE."""
    have = job_count(world)
    task = progress.add_task(f"filling jobs to {rows:,} rows", total=rows, completed=have)
    step = 100_000
    for start in range(have + 1, rows + 1, step):
        stop = min(rows, start + step - 1)
        world.sql(FILL_ROWS.replace("%(start)s", str(start)).replace("%(stop)s", str(stop)))
        progress.update(task, completed=stop)
    world.sql("VACUUM ANALYZE jobs")


#: The console's jobs page, as `read_latencies` measures ListJobs: its query per name.
CONSOLE_PAGES = {
    "Console jobs": "",
    "Console jobs state+type": "state=FAILED&type=echo",
    "Console jobs 2 labels+day": "label=env%3Dprod&label=team%3Dt2&created_after=",
}
#: Pages of each kind the console measurement renders at most (each is a ListJobs plus 50 rows of HTML).
CONSOLE_CALLS = 100


def console_page_times(http_address: str, calls: int) -> dict[str, float]:
    """Mean milliseconds the gateway spends on a page of the console's jobs list (its `Server-Timing`: the
    query and the HTML), one caller, for the same filters as `read_latencies`' ListJobs."""
    day_ago = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    figures = {}
    with httpx.Client(base_url=f"http://{http_address}", timeout=30) as http:
        for name, query in CONSOLE_PAGES.items():
            url = f"/console/jobs?{query}{day_ago if query.endswith('=') else ''}"
            timings = []
            for _ in range(min(calls, CONSOLE_CALLS) + 1):
                answer = http.get(url)
                answer.raise_for_status()
                timings.append(float(answer.headers["server-timing"].removeprefix("app;dur=")))
            figures[name] = statistics.mean(timings[1:])  # the first warms the caches
    return figures


def read_latencies(world: World, address: str, calls: int) -> dict[str, float]:
    """Mean milliseconds per call, one caller: GetJob of random jobs, and a ListJobs page (50, newest first)
    with no filter, with a state filter, with state and type, and with two labels (1 job in 20) and the last
    day (one row per second was filled)."""
    ids = [row[0] for row in world.sql(f"SELECT job_id FROM jobs ORDER BY random() LIMIT {calls}")]
    channel = grpc.insecure_channel(address)
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    pages = {
        "ListJobs": jobs_pb2.ListJobsRequest(page_size=50),
        "ListJobs state": jobs_pb2.ListJobsRequest(page_size=50, state=jobs_pb2.JOB_STATE_FAILED),
        "ListJobs state+type": jobs_pb2.ListJobsRequest(
            page_size=50, state=jobs_pb2.JOB_STATE_FAILED, type="echo"
        ),
        "ListJobs 2 labels+day": jobs_pb2.ListJobsRequest(page_size=50, labels={"env": "prod", "team": "t2"}),
    }
    pages["ListJobs 2 labels+day"].created_after.FromDatetime(datetime.now(UTC) - timedelta(days=1))
    figures = {}
    stub.GetJob(jobs_pb2.GetJobRequest(job_id=ids[0]), timeout=10)
    timings = []
    for job_id in random.sample(ids, len(ids)):
        started = time.perf_counter()
        stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=10)
        timings.append(time.perf_counter() - started)
    figures["GetJob"] = statistics.mean(timings) * 1_000
    for name, request in pages.items():
        timings = []
        for _ in range(calls):
            started = time.perf_counter()
            stub.ListJobs(request, timeout=10)
            timings.append(time.perf_counter() - started)
        figures[name] = statistics.mean(timings) * 1_000
    channel.close()
    return figures

"""`python -m bench.soak`: jobs through the namespace cluster of `bench.scale_out` (two gateways, three worker
hosts, a scheduler) for as long as it takes to run them all, and the memory of every taskapp process once a
tenth of them has run and again at the end. A process that keeps something per job (a cache without a bound,
a list of ids, a leaked connection) grows between the two; one that only warmed up does not.

Jobs go in rounds of `warm`: SubmitJobs of 1,000 noop jobs, spread over both gateways, while the workers run
them; each round ends when every job so far has SUCCEEDED, so the memory is read with nothing in flight.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.env import wait_until
from bench.scale_out import METADATA, WORKER_HOSTS, ClusterBench, drained
from grpc_gateway.client import CHANNEL_OPTIONS, channel_target
from grpc_gateway.v1 import jobs_pb2, jobs_pb2_grpc

BATCH = 1_000
#: How much a process may grow from the first reading to the last (issue "Many hosts", done-when 7).
GROWTH_BOUND = 0.05


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


def rss_by_process(bench: ClusterBench) -> dict[str, dict[int, int]]:
    """Process kind -> pid -> resident memory (KiB) of every taskapp process in the cluster."""
    kinds: dict[str, dict[int, int]] = {"gateway": {}, "worker main": {}, "worker pool": {}, "scheduler": {}}
    for host in bench.gateways:
        pid = bench.world.processes[host.name].pid
        kinds["gateway"][pid] = rss_kib(pid)
    for host in bench.workers:
        main = bench.world.processes[host.name].pid
        kinds["worker main"][main] = rss_kib(main)
        for pid in host.pids():
            if pid != main:
                kinds["worker pool"][pid] = rss_kib(pid)
    scheduler = bench.world.processes["scheduler"].pid
    kinds["scheduler"][scheduler] = rss_kib(scheduler)
    return kinds


def run_round(
    bench: ClusterBench, stub: jobs_pb2_grpc.JobServiceStub, jobs: int, done_before: int, batch: int
) -> None:
    for sent in range(0, jobs, batch):
        noops = [jobs_pb2.SubmitJobRequest(type="noop")] * min(batch, jobs - sent)
        stub.SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=noops), timeout=60, metadata=METADATA)
    wait_until(lambda: drained(bench, done_before + jobs), 600, "the round's jobs to succeed", interval=0.2)


def soak(
    bench: ClusterBench, total: int, warm: int, batch: int = BATCH, progress: Progress | None = None
) -> dict[str, Any]:
    """Run `total` jobs in rounds of `warm` (SubmitJobs of `batch`) on an opened cluster; the memory of every
    process after the first round and after the last, and each kind's largest growth between the two. The first
    round must give each gateway a few calls: a gateway's memory settles over its first batches."""
    while len(bench.workers) < WORKER_HOSTS:
        bench.add_worker()
    bench.resume()
    task = progress.add_task(f"soak: {total:,} jobs", total=total) if progress else None
    started = time.perf_counter()
    readings: list[dict[str, dict[int, int]]] = []
    target = channel_target(bench.address(*bench.gateways))
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        for done in range(0, total, warm):
            run_round(bench, stub, min(warm, total - done), done, batch)
            if progress and task is not None:
                progress.advance(task, min(warm, total - done))
            if done == 0:
                readings.append(rss_by_process(bench))
    readings.append(rss_by_process(bench))
    first, last = readings[0], readings[-1]
    growth = {
        kind: max(last[kind][pid] / first[kind][pid] - 1 for pid in first[kind] if pid in last[kind])
        for kind in first
    }
    return {
        "jobs": total,
        "warm": warm,
        "seconds": time.perf_counter() - started,
        "rss_kib": {
            kind: {str(pid): [first[kind][pid], last[kind].get(pid)] for pid in first[kind]} for kind in first
        },
        "growth": growth,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("soak-results.json"))
    args = parser.parse_args()
    # Stopped (a timeout, a CI job cancelled): still remove what the run made.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="taskapp-soak-"))
    bench = ClusterBench.create(workdir)
    try:
        bench.open()
        with Progress(console=console, transient=True) as progress:
            figures = soak(bench, args.jobs, args.jobs // 10, progress=progress)
    except BaseException:
        console.print(f"[red]soak failed; the processes' logs are in {workdir}[/red]")
        raise
    finally:
        bench.close()
    table = Table(title=f"Resident memory (KiB) after {figures['warm']:,} and {figures['jobs']:,} jobs")
    for column in ("process", "first", "last", "growth"):
        table.add_column(column, justify="right" if column != "process" else "left")
    for kind, processes in figures["rss_kib"].items():
        for pid, (first, last) in processes.items():
            table.add_row(f"{kind} {pid}", f"{first:,}", f"{last:,}", f"{last / first - 1:+.1%}")
    console.print(table)
    for kind, growth in figures["growth"].items():
        verdict = "yes" if growth <= GROWTH_BOUND else "NO"
        console.print(f"{kind}: largest growth {growth:+.1%} (<= {GROWTH_BOUND:.0%}: {verdict})")
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    console.print(f"{figures['jobs']:,} jobs in {figures['seconds']:.0f} s; figures written to {args.out}")


if __name__ == "__main__":
    main()

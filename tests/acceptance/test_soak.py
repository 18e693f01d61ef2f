"""The worker's main process stays flat: its memory does not grow with the number of jobs it has run.

A bounded soak for CI (12,000 noop jobs); the closing figures come from the same measure at 50,000."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from grpc_gateway.v1 import jobs_pb2
from taskapp.store.tables import jobs_table
from tests.helpers import Stack, sql_count, wait_for

MakeStack = Callable[..., Stack]


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


def run_noops(stack: Stack, count: int, done_before: int) -> None:
    for _ in range(count // 1_000):
        request = jobs_pb2.SubmitJobsRequest(
            jobs=[jobs_pb2.SubmitJobRequest(type="noop") for _ in range(1_000)]
        )
        stack.stub().SubmitJobs(request, timeout=60)
    expected = done_before + count
    wait_for(
        lambda: sql_count(stack, jobs_table, jobs_table.c.state == "SUCCEEDED") == expected,
        300,
        f"{expected} jobs to succeed",
        interval=0.5,
    )


@pytest.mark.slow
def test_the_worker_main_process_stays_flat(make_stack: MakeStack) -> None:
    stack = make_stack(scheduler=False)
    worker = stack.processes["worker"].pid
    run_noops(stack, 2_000, 0)
    warm = rss_kib(worker)
    run_noops(stack, 10_000, 2_000)
    grown = rss_kib(worker)
    assert grown <= warm * 1.03, f"the worker's main process grew from {warm} KiB to {grown} KiB"

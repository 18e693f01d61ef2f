"""LeaseKeeper's rules on the in-memory store, with real processes standing in for pool processes: which runs it
renews, and which it stops (SIGKILL) and why."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from taskapp.clock import utcnow
from taskapp.jobs import JobState
from taskapp.store.engine import open_store
from taskapp.store.memory import InMemoryJobStore
from taskapp.worker_leases import EndingRuns, LeaseKeeper
from tests.helpers import create, free_port, new_job

WORKER = "celery@here"


class PoolProcesses:
    """`sleep` processes in place of pool processes: stopping a run kills its process."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def request(self, task_id: str, started_ago: float = 0.0) -> Any:
        process = subprocess.Popen(["sleep", "60"])
        self.processes.append(process)
        return SimpleNamespace(
            id=task_id, name="handlers.echo", worker_pid=process.pid, time_start=time.time() - started_ago
        )

    def killed(self, request: Any) -> bool:
        process = next(process for process in self.processes if process.pid == request.worker_pid)
        try:
            return process.wait(timeout=5) == -9
        except subprocess.TimeoutExpired:
            return False

    def alive(self, request: Any) -> bool:
        process = next(process for process in self.processes if process.pid == request.worker_pid)
        return process.poll() is None


@pytest.fixture
def pool() -> Iterator[PoolProcesses]:
    processes = PoolProcesses()
    yield processes
    for process in processes.processes:
        process.kill()
        process.wait()


@pytest.fixture
def ending(tmp_path: Path) -> EndingRuns:
    return EndingRuns(tmp_path / "ending")


def claimed(store: InMemoryJobStore, job_id: str, worker: str = WORKER) -> None:
    create(store, new_job(job_id))
    assert store.claim(job_id, worker, utcnow(), 30, f"{job_id}@1") is not None


def test_live_runs_are_renewed_in_one_go_and_nothing_is_stopped(
    pool: PoolProcesses, ending: EndingRuns
) -> None:
    store = InMemoryJobStore()
    claimed(store, "a")
    claimed(store, "b")
    create(store, new_job("not-yet"))  # its delivery has not claimed it yet
    runs = [pool.request("a@1"), pool.request("b@1"), pool.request("not-yet@1")]
    keeper = LeaseKeeper(store, WORKER, 30, lambda: runs, ending)
    before = store.jobs["a"].lease_expires_at
    keeper.renew()
    after = store.jobs["a"].lease_expires_at
    assert before is not None and after is not None and after > before
    assert keeper.stopped == {} and all(pool.alive(run) for run in runs)


def test_a_run_whose_job_moved_on_is_stopped(pool: PoolProcesses, ending: EndingRuns) -> None:
    store = InMemoryJobStore()
    for job_id in ("cancelled", "elsewhere", "lapsed", "done"):
        claimed(store, job_id)
    store.cancel("cancelled", utcnow())
    # Its lease lapsed, the job was rescued, and another worker runs it now.
    store.fail_run("elsewhere", 1, JobState.RETRYING, "lease lapsed", utcnow(), retry_at=utcnow())
    store.claim("elsewhere", "celery@there", utcnow(), 30, "elsewhere@2")
    lapsed = store.jobs["lapsed"]
    store.jobs["lapsed"] = dataclasses.replace(lapsed, lease_expires_at=utcnow() - timedelta(seconds=1))
    store.succeed("done", 1, None, utcnow())
    runs = {job_id: pool.request(f"{job_id}@1") for job_id in ("cancelled", "elsewhere", "lapsed", "done")}
    keeper = LeaseKeeper(store, WORKER, 30, lambda: list(runs.values()), ending)
    keeper.renew()
    assert set(keeper.stopped) == {"cancelled@1", "elsewhere@1", "lapsed@1"}
    assert all(pool.killed(runs[job_id]) for job_id in ("cancelled", "elsewhere", "lapsed"))
    assert pool.alive(runs["done"]), "a run that is ending goes on"


def test_a_run_not_renewed_for_two_thirds_of_its_lease_is_stopped_unless_it_is_ending(
    pool: PoolProcesses, ending: EndingRuns
) -> None:
    store = open_store(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere")
    stale, fresh = pool.request("stale@1", started_ago=21), pool.request("fresh@1", started_ago=1)
    # Its handler has returned and its outcome waits for the database; the other's outcome waited, then was written.
    writing, written = pool.request("writing@1", started_ago=21), pool.request("written@1", started_ago=21)
    ending.mark("writing@1")
    ending.mark("written@1")
    ending.unmark("written@1")
    told: list[str] = []
    keeper = LeaseKeeper(store, WORKER, 30, lambda: [stale, fresh, writing, written], ending, told.append)
    keeper.renew()  # the database does not answer: no run is renewed, none is stopped for that alone
    assert keeper.stopped == {}
    keeper.renew()
    assert len(told) == 1 and "unavailable" in told[0], "the worker is told once to stop consuming"
    keeper.fence()
    assert set(keeper.stopped) == {"stale@1", "written@1"}
    assert pool.killed(stale) and pool.killed(written)
    assert pool.alive(fresh) and pool.alive(writing)
    assert keeper.spared == {"writing@1"}

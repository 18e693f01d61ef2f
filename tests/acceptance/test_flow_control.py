"""Flow control with the real gateway, several workers and the scheduler: concurrency limits per key and per
job type hold across every worker, waiting jobs wait in SQL without going round the broker, keys take turns,
and ExplainJob says why a job waits. The execution record (outside taskapp's SQL) and the workers' own logs of
the messages they received are the proof."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from grpc_gateway.v1 import jobs_pb2
from tests.helpers import ExecutionRecord, Run, Stack, free_port, metric_total, taskapp, wait_for

MakeStack = Callable[..., Stack]
#: Each test runs several workers busy at once: one test of the module at a time, beside the rest of the run.
pytestmark = pytest.mark.xdist_group("flow_control")
WORKERS = ["worker", "worker-1", "worker-2"]


def recorded(
    record: ExecutionRecord, job_id: str, seconds: float, **fields: object
) -> jobs_pb2.SubmitJobRequest:
    request = jobs_pb2.SubmitJobRequest(job_id=job_id, type="recorded", **fields)  # type: ignore[arg-type]
    request.payload.update(record.payload(seconds=seconds))
    return request


def submit_all(stack: Stack, requests: list[jobs_pb2.SubmitJobRequest]) -> None:
    stack.stub().SubmitJobs(jobs_pb2.SubmitJobsRequest(jobs=requests), timeout=30)


def most_at_once(runs: list[Run]) -> int:
    """The most runs that were going at one moment, from their start and finish times."""
    edges = sorted([(run.started, 1) for run in runs] + [(run.last_seen, -1) for run in runs])
    most = going = 0
    for _, step in edges:
        going += step
        most = max(most, going)
    return most


def deliveries(stack: Stack, names: list[str]) -> Counter[str]:
    """Messages each job's runs were delivered in, as the workers logged receiving them."""
    received = re.compile(r"Task handlers\.\w+\[(?P<job_id>[^@\]]+)@\d+\] received")
    return Counter(match["job_id"] for name in names for match in received.finditer(stack.log(name)))


def explain(stack: Stack, job_id: str) -> jobs_pb2.ExplainJobResponse:
    return stack.stub().ExplainJob(jobs_pb2.ExplainJobRequest(job_id=job_id), timeout=10)


def explained_as(stack: Stack, job_id: str, code: jobs_pb2.WaitCode) -> jobs_pb2.ExplainJobResponse | None:
    explained = explain(stack, job_id)
    return explained if explained.code == code else None


def all_succeeded(stack: Stack, job_ids: list[str]) -> bool:
    return all(
        stack.stub().GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=10).state
        == jobs_pb2.JOB_STATE_SUCCEEDED
        for job_id in job_ids
    )


def test_a_key_limit_of_2_holds_across_3_workers_and_leaves_another_key_alone(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = make_stack()
    worker_metrics = [stack.env["TASKAPP_WORKER_METRICS_ADDR"]]
    for name in WORKERS[1:]:
        worker_metrics.append(f"127.0.0.1:{free_port()}")
        stack.start_worker(2, name=name, TASKAPP_WORKER_METRICS_ADDR=worker_metrics[-1])
    record = ExecutionRecord(tmp_path / "record")
    limited = [f"a-{n}" for n in range(20)]
    free = [f"b-{n}" for n in range(20)]
    submit_all(
        stack,
        [
            request
            for a, b in zip(limited, free, strict=True)
            for request in (
                recorded(record, a, 0.4, concurrency_key="tenant-a", concurrency_limit=2),
                recorded(record, b, 0.4, concurrency_key="tenant-b", concurrency_limit=100),
            )
        ],
    )
    # A job of the first key that waits says so, naming the two that hold its key's slots.
    waiting = wait_for(
        lambda: next(
            (e for job_id in limited if (e := explained_as(stack, job_id, jobs_pb2.WAIT_CODE_KEY_LIMIT))),
            None,
        ),
        10,
        "a job waiting for its key",
    )
    assert "'tenant-a' runs its limit of 2" in waiting.reason
    assert len(waiting.blocking_job_ids) <= 2 and set(waiting.blocking_job_ids) <= set(limited)

    wait_for(lambda: all_succeeded(stack, limited + free), 60, "all 40 jobs to succeed")
    runs = record.runs()
    assert Counter(run.job_id for run in runs) == Counter(limited + free), "each job ran once"
    assert all(run.finished for run in runs)
    assert most_at_once([run for run in runs if run.job_id in limited]) == 2
    assert most_at_once([run for run in runs if run.job_id in free]) >= 3, "the other key is not held to 2"
    received = deliveries(stack, WORKERS)
    assert all(received[job_id] <= 2 for job_id in limited), "a waiting job's message went round once at most"
    assert sum(received[job_id] == 2 for job_id in limited) >= 10, "most of the first key's jobs waited"
    assert all(received[job_id] == 1 for job_id in free)
    # Each run's wait from due to start, per type and priority, counted by the workers.
    waited = sum(
        metric_total(address, "taskapp_job_wait_seconds_count", type="recorded", priority="default")
        for address in worker_metrics
    )
    assert waited >= 40


def test_under_a_type_limit_of_1_a_key_with_10_waiting_is_not_starved_by_one_with_1000(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = make_stack()
    assert taskapp(stack, "limits", "set", "recorded", "--max-running", "1").strip() == (
        "recorded: at most 1 running"
    )
    record = ExecutionRecord(tmp_path / "record")
    big = [f"a-{n:04}" for n in range(1000)]
    submit_all(stack, [recorded(record, job_id, 0.05, concurrency_key="tenant-a") for job_id in big])
    # Every message of the big key has been taken, and its jobs wait in SQL for the one slot.
    wait_for(lambda: len(deliveries(stack, ["worker"])) == len(big), 180, "the 1,000 jobs to be taken")
    last = wait_for(
        lambda: explained_as(stack, big[-1], jobs_pb2.WAIT_CODE_TYPE_LIMIT),
        30,
        "the last of them to wait in line",
    )
    assert "job type 'recorded' runs its limit of 1" in last.reason
    metrics = stack.env["TASKAPP_METRICS_ADDR"]
    waiting = metric_total(metrics, "taskapp_jobs_waiting", reason="type_limit")
    assert 100 <= waiting <= 999, "most of the 1,000 wait (one runs at a time meanwhile)"
    assert abs(metric_total(metrics, "taskapp_jobs_waiting_for_key", key="tenant-a") - waiting) <= 10
    small = [f"b-{n}" for n in range(10)]
    submit_all(stack, [recorded(record, job_id, 0.05, concurrency_key="tenant-b") for job_id in small])
    # From when both keys wait (each of the 10 has been taken, and waits or runs already).
    taken = (jobs_pb2.WAIT_CODE_TYPE_LIMIT, jobs_pb2.WAIT_CODE_RUNNING, jobs_pb2.WAIT_CODE_FINISHED)
    wait_for(lambda: all(explain(stack, job_id).code in taken for job_id in small), 30, "the 10 to wait")
    both_waiting = time.time()
    wait_for(lambda: all_succeeded(stack, small), 60, "the small key's 10 jobs")
    runs = record.runs()
    next_20 = [run.job_id for run in runs if run.started >= both_waiting][:20]
    started_before = {run.job_id for run in runs if run.started < both_waiting}
    assert set(small) <= started_before | set(next_20), next_20
    assert most_at_once(runs) == 1, "one slot, the worker's two processes busy taking messages"


def test_a_paused_queue_starts_none_of_its_50_jobs_and_on_resume_runs_each_once(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = make_stack(concurrency=4)
    assert taskapp(stack, "pause", "queue", "low").strip() == "queue low: no limit, paused"
    record = ExecutionRecord(tmp_path / "record")
    low = [f"low-{n}" for n in range(50)]
    others = [f"default-{n}" for n in range(5)]
    submit_all(
        stack,
        [recorded(record, job_id, 0.0, priority=jobs_pb2.PRIORITY_LOW) for job_id in low]
        + [recorded(record, job_id, 0.0) for job_id in others],
    )
    wait_for(lambda: all_succeeded(stack, others), 30, "the default queue's jobs, which go on")
    paused = wait_for(lambda: explained_as(stack, low[-1], jobs_pb2.WAIT_CODE_PAUSED), 30, "a paused job")
    assert paused.reason == "waiting: the low queue is paused"
    # For 10 s, nothing of the paused queue starts (checked all along, not only at the end).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert not [run for run in record.runs() if run.job_id in low]
        time.sleep(0.2)

    assert taskapp(stack, "resume", "queue", "low").strip() == "queue low: no limit"
    wait_for(lambda: all_succeeded(stack, low), 60, "the 50 jobs after the resume")
    runs = [run.job_id for run in record.runs() if run.job_id in low]
    assert sorted(runs) == sorted(low), "each ran once: none lost, none doubled"
    assert all(count <= 2 for count in deliveries(stack, ["worker"]).values())


def test_explain_job_says_scheduled_backing_off_running_queued_and_finished(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = make_stack(concurrency=1)
    stub = stack.stub()
    scheduled = jobs_pb2.SubmitJobRequest(job_id="later", type="noop")
    scheduled.run_at.FromSeconds(int(time.time()) + 3600)
    stub.SubmitJob(scheduled, timeout=10)
    answer = explain(stack, "later")
    assert answer.code == jobs_pb2.WAIT_CODE_SCHEDULED
    assert answer.until == scheduled.run_at and answer.reason.startswith("scheduled for ")

    failing = jobs_pb2.SubmitJobRequest(job_id="failing", type="fail", max_attempts=3)
    failing.payload.update({"times": 1})
    stub.SubmitJob(failing, timeout=10)
    backing_off = wait_for(
        lambda: explained_as(stack, "failing", jobs_pb2.WAIT_CODE_BACKING_OFF), 30, "a back-off"
    )
    assert "after attempt 1 of 3 failed (InducedFailure: induced failure 1 of 1)" in backing_off.reason
    assert backing_off.until.ToDatetime() > datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)
    wait_for(lambda: explained_as(stack, "failing", jobs_pb2.WAIT_CODE_FINISHED), 60, "the second attempt")
    assert explain(stack, "failing").reason.startswith("finished: SUCCEEDED at ")

    record = ExecutionRecord(tmp_path / "record")
    hold = tmp_path / "hold"
    hold.touch()
    holder = jobs_pb2.SubmitJobRequest(job_id="holder", type="recorded")
    holder.payload.update(record.payload(hold=hold))
    stub.SubmitJob(holder, timeout=10)
    running = wait_for(
        lambda: explained_as(stack, "holder", jobs_pb2.WAIT_CODE_RUNNING), 30, "the holder to run"
    )
    assert running.worker and running.reason.startswith(f"running on {running.worker} since ")
    assert "its lease is held until" in running.reason and running.HasField("until")
    submit_all(stack, [recorded(record, f"behind-{n}", 0.0) for n in range(3)])
    queued = explain(stack, "behind-2")
    assert queued.code == jobs_pb2.WAIT_CODE_QUEUED and queued.ahead == 2
    age = metric_total(
        stack.env["TASKAPP_METRICS_ADDR"], "taskapp_oldest_waiting_job_age_seconds", queue="default"
    )
    assert age > 0
    assert queued.reason.startswith(
        "queued in the default queue, behind 2 job(s) of higher or equal priority"
    )
    hold.unlink()
    wait_for(
        lambda: all_succeeded(stack, ["holder", "behind-0", "behind-1", "behind-2"]), 30, "the rest to run"
    )


def test_explain_job_says_no_worker_that_has_its_type_is_answering(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False, scheduler=False)
    stack.stub().SubmitJob(jobs_pb2.SubmitJobRequest(job_id="alone", type="noop"), timeout=10)
    answer = explain(stack, "alone")
    assert answer.code == jobs_pb2.WAIT_CODE_NO_WORKER
    assert answer.reason == "no worker that has job type 'noop' loaded is answering"
    with pytest.raises(grpc.RpcError) as raised:
        explain(stack, "missing")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_rate_of_5_per_second_spreads_100_starts_over_20_s_on_3_workers(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = make_stack()
    for name in WORKERS[1:]:
        stack.start_worker(2, name=name)
    assert taskapp(stack, "limits", "set", "recorded", "--rate", "5").strip() == "recorded: 5 starts per 1 s"
    record = ExecutionRecord(tmp_path / "record")
    job_ids = [f"r-{n}" for n in range(100)]
    submit_all(stack, [recorded(record, job_id, 0.0) for job_id in job_ids])
    waiting = wait_for(
        lambda: explained_as(stack, job_ids[-1], jobs_pb2.WAIT_CODE_RATE_LIMIT), 30, "a given start"
    )
    assert waiting.reason.startswith(
        "waiting: job type 'recorded' starts 5 start(s) per 1 s; its start comes at"
    )
    wait_for(lambda: all_succeeded(stack, job_ids), 60, "the 100 jobs")

    starts = sorted(run.started for run in record.runs())
    assert len(starts) == 100, "each ran once"
    # In any 1 s window (each start opening one), at most 5 starts, one more at the edges.
    assert max(sum(start <= other < start + 1 for other in starts) for start in starts) <= 6
    # About 20 s in all: the first starts at once, the 99 others 0.2 s apart from when the workers have taken
    # the 100 messages (a second or two); on a busy machine, starts that come late move the later ones too.
    assert 18 <= starts[-1] - starts[1] <= 25 and starts[-1] - starts[0] <= 30
    # Each waits in SQL for the start it was given, its message taken once before and sent once for it; one
    # whose start came late, with others (the workers were busy taking the 100 messages), is given another:
    # another round of the broker, for a few of them.
    received = deliveries(stack, WORKERS)
    assert sum(received.values()) <= 2 * len(job_ids) + 30, received


def test_a_key_rate_spaces_that_key_s_starts_and_leaves_another_key_alone(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = make_stack(concurrency=4)
    said = taskapp(stack, "limits", "set-key-rate", "tenant-slow", "--rate", "2").strip()
    assert said == "key tenant-slow: 2 starts per 1 s"
    record = ExecutionRecord(tmp_path / "record")
    slow = [f"slow-{n}" for n in range(6)]
    fast = [f"fast-{n}" for n in range(6)]
    submit_all(
        stack,
        [recorded(record, job_id, 0.0, concurrency_key="tenant-slow") for job_id in slow]
        + [recorded(record, job_id, 0.0, concurrency_key="tenant-fast") for job_id in fast],
    )
    wait_for(lambda: all_succeeded(stack, slow + fast), 60, "the 12 jobs")
    runs = record.runs()
    assert sorted(run.job_id for run in runs) == sorted(slow + fast), "each ran once"
    slow_starts = sorted(run.started for run in runs if run.job_id in slow)
    # Started at least 0.5 s apart: in any 1 s window, at most 2 starts, one more at the edges.
    assert max(sum(start <= other < start + 1 for other in slow_starts) for start in slow_starts) <= 3
    assert slow_starts[-1] - slow_starts[0] >= 2.2
    fast_starts = sorted(run.started for run in runs if run.job_id in fast)
    assert fast_starts[-1] - fast_starts[0] < slow_starts[-1] - slow_starts[0] - 1, (
        "the other key is not held"
    )
    assert "key tenant-slow" in taskapp(stack, "limits", "list")

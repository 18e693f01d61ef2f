"""Where a job's time from SubmitJob to the start of its run goes, stage by stage.

Each process stamps what it sees of a job on its way to a run, in wall-clock seconds (comparable between the
processes of one host, and roughly between hosts whose clocks are kept by NTP):

    received    the gateway has the SubmitJob call
    writing     its batch's INSERT begins (the job's created_at)
    committed   the job's row is committed
    published   its message is in the broker
    delivered   a worker's main process has the message (stamped into the request it hands to a pool process)
    started     a pool process begins the task
    claimed     the claim is committed: the job is RUNNING

Each stage whose two ends one process knows is observed as `taskapp_job_start_seconds{stage}`: `batching`
(received → writing: validation, and the wait for the write before it), `insert` (writing → committed) and
`publish` (committed → published) in the gateway, `handoff` (delivered → started) and `claim` (started →
claimed) in the worker. `queue`, the time in the broker, runs from the message's
`taskapp_sent_at` header (set as the message is built, so it holds the publish's round trip too) to delivered.

With `TASKAPP_TRACE_FILE` set, each process also appends its stamps of every job to that file, one JSON line
per job and process: the benchmark joins them by job id into a breakdown of each job's way to its run.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from typing import IO, Any

from prometheus_client import Histogram

from taskapp.config import get_settings
from taskapp.jobs import SubmitOutcome

#: The message header that says when the message was built to be sent (seconds since the epoch).
SENT_AT_HEADER = "taskapp_sent_at"
#: The key the worker's main process adds to a request it hands to a pool process: when it got the message.
DELIVERED_AT = "taskapp_delivered_at"

STAGE_SECONDS = Histogram(
    "taskapp_job_start_seconds",
    "Time a job spends in each stage from SubmitJob to the start of its run: batching, insert, publish (in the "
    "gateway), queue (in the broker), handoff (to a pool process), claim",
    ["stage"],
    buckets=(
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3_600
    ),
)  # fmt: skip
#: A stage's histogram, looked up once: `labels()` each time cost as much as the observation.
stage_seconds = functools.cache(STAGE_SECONDS.labels)


def submitted(outcome: SubmitOutcome, received: float) -> None:
    """The gateway's part, for a job a call received at `received` created (and published, unless it waits
    for its run_at)."""
    if outcome.committed_at is None:
        return
    stamps = {
        "received": received,
        "writing": outcome.job.created_at.timestamp(),
        "committed": outcome.committed_at.timestamp(),
    }
    stage_seconds("batching").observe(stamps["writing"] - received)
    stage_seconds("insert").observe(stamps["committed"] - stamps["writing"])
    if outcome.published_at is not None:
        stamps["published"] = outcome.published_at.timestamp()
        stage_seconds("publish").observe(stamps["published"] - stamps["committed"])
    _trace(outcome.job.job_id, stamps)


def claimed(job_id: str, request: Any, started: float, claimed: float) -> None:
    """The worker's part, in the pool process that claimed the job; `request` is the task's request, which holds
    the message's headers and the main process's delivery stamp."""
    stamps = {"started": started, "claimed": claimed}
    delivered = getattr(request, DELIVERED_AT, None)
    if isinstance(delivered, float):
        stamps["delivered"] = delivered
        stage_seconds("handoff").observe(started - delivered)
        sent = getattr(request, SENT_AT_HEADER, None)
        if isinstance(sent, float):
            stamps["sent"] = sent
            stage_seconds("queue").observe(delivered - sent)
    stage_seconds("claim").observe(claimed - started)
    _trace(job_id, stamps)


_trace_files: dict[int, IO[str]] = {}
_trace_lock = threading.Lock()


def _trace(job_id: str, stamps: dict[str, float]) -> None:
    path = get_settings().trace_file
    if not path:
        return
    line = json.dumps({"job_id": job_id, **stamps}) + "\n"
    with _trace_lock:
        # One file object per process (a pool process must not share its parent's); a line is one write to
        # a file opened for appending, so lines of different processes do not mix.
        file = _trace_files.get(os.getpid())
        if file is None:
            file = _trace_files[os.getpid()] = open(path, "a", buffering=1)  # noqa: SIM115
        file.write(line)

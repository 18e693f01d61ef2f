"""RetryJobs and CancelJobs by filter against the real gateway, on PostgreSQL and Redis: through the `taskapp`
command, gRPC and HTTP."""

from __future__ import annotations

import json
import statistics
import subprocess
import threading
import time
from collections.abc import Callable

import grpc
import httpx
import psycopg
import pytest
import redis
from celery import Celery

from grpc_gateway.v1 import jobs_pb2
from taskapp.jobs import JobFilter, JobState
from taskapp.publisher import CeleryPublisher
from taskapp.routing import DEAD_LETTER_QUEUE
from taskapp.store.engine import open_store
from tests.helpers import BIN, Stack

MakeStack = Callable[..., Stack]

#: 100,000 jobs: 10,000 DEAD_LETTER with label campaign=c7 (the ones to retry); 5,000 more DEAD_LETTER and
#: 5,000 SUCCEEDED with that label or not, so that the filter has others to leave alone.
FILL = """
INSERT INTO jobs (job_id, type, priority, state, payload, attempts, max_attempts, last_error, timeout_seconds,
                  fingerprint, created_at, updated_at, scheduled_at, finished_at, worker, progress_message, labels)
SELECT 'bulk-' || g, 'noop', 'default',
       CASE WHEN g <= 15000 THEN 'DEAD_LETTER' ELSE 'SUCCEEDED' END,
       '{}', 3, 3, CASE WHEN g <= 15000 THEN 'boom' ELSE '' END, 300, md5(g::text),
       now(), now(), now(), now(), 'w', '',
       CASE WHEN g <= 10000 OR g BETWEEN 15001 AND 20000 THEN '{"campaign": "c7"}'::jsonb
            ELSE '{"campaign": "c8"}'::jsonb END
FROM generate_series(1, 100000) AS g
"""


def dead_letter_ids(client: redis.Redis) -> set[str]:
    return {json.loads(raw)["headers"]["id"] for raw in client.lrange(DEAD_LETTER_QUEUE, 0, -1)}


@pytest.mark.slow
@pytest.mark.saturating
def test_retry_jobs_queues_exactly_the_10000_dead_letters_it_matches_while_submits_go_on(
    make_stack: MakeStack,
) -> None:
    stack = make_stack(worker=False, scheduler=False)
    database = stack.env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(FILL)
        conn.execute("ANALYZE jobs")
    # Their messages wait in the dead-letter queue, as a worker leaves them: the 10,000 and 500 others.
    celery = Celery(set_as_current=False)
    celery.config_from_object("celeryconfig")
    celery.conf.broker_url = stack.env["REDIS_URL"]
    store = open_store(stack.env["DATABASE_URL"])
    publisher = CeleryPublisher(celery)
    for labels, state, count in (
        (({"campaign": "c7"}), JobState.DEAD_LETTER, 10_000),
        ({"campaign": "c8"}, JobState.DEAD_LETTER, 500),
    ):
        for job in store.list(JobFilter(state=state, labels=labels), count, None):
            publisher.dead_letter(job, "boom")
    broker = redis.Redis.from_url(stack.env["REDIS_URL"])
    assert len(dead_letter_ids(broker)) == 10_500

    # A dry run counts and changes nothing: through the command, then gRPC.
    filters = ("--state", "dead_letter", "--label", "campaign=c7")
    dry = subprocess.run(
        [str(BIN / "taskapp"), "--json", "retry-jobs", *filters, "--dry-run"],
        env={**stack.env, "TASKAPP_ADDRESS": stack.address},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) == {"acted_on": 10_000, "skipped": 0}
    request = jobs_pb2.RetryJobsRequest(
        state=jobs_pb2.JOB_STATE_DEAD_LETTER, labels={"campaign": "c7"}, dry_run=True
    )
    assert stack.stub().RetryJobs(request, timeout=120).acted_on == 10_000
    assert store.list(JobFilter(state=JobState.QUEUED), 1, None) == []
    assert len(dead_letter_ids(broker)) == 10_500

    # The run itself over HTTP, while another caller keeps submitting.
    latencies: list[float] = []
    failures: list[str] = []
    retrying = threading.Event()
    retrying.set()

    def submit_meanwhile() -> None:
        stub = stack.stub()
        while retrying.is_set():
            started = time.perf_counter()
            try:
                stub.SubmitJob(jobs_pb2.SubmitJobRequest(type="noop"), timeout=10)
            except grpc.RpcError as error:
                failures.append(repr(error))
            latencies.append(time.perf_counter() - started)

    submitter = threading.Thread(target=submit_meanwhile)
    submitter.start()
    try:
        answer = httpx.post(
            f"{stack.http_url}/v1/jobs:retry",
            json={"state": "JOB_STATE_DEAD_LETTER", "labels": {"campaign": "c7"}},
            timeout=300,
        )
    finally:
        retrying.clear()
        submitter.join(30)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"acted_on": 10_000, "skipped": 0}
    assert failures == [] and len(latencies) > 20, (failures[:3], len(latencies))
    p99 = statistics.quantiles(latencies, n=100)[98] * 1_000
    print(f"SubmitJob during RetryJobs of 10,000: {len(latencies)} calls, p99 {p99:.0f} ms")
    assert p99 < 2_000, f"SubmitJob p99 {p99:.0f} ms while RetryJobs ran"

    with psycopg.connect(database) as conn:
        states: dict[str, int] = dict(
            conn.execute(
                "SELECT state, count(*) FROM jobs WHERE job_id LIKE 'bulk-%' GROUP BY state"
            ).fetchall()
        )
        queued = {
            row[0]
            for row in conn.execute("SELECT job_id FROM jobs WHERE job_id LIKE 'bulk-%' AND state = 'QUEUED'")
        }
    assert states == {"QUEUED": 10_000, "DEAD_LETTER": 5_000, "SUCCEEDED": 85_000}
    assert queued == {f"bulk-{n}" for n in range(1, 10_001)}
    left = dead_letter_ids(broker)
    assert len(left) == 500 and not left & queued, "the retried jobs' dead letters are gone, the others stay"
    stats = stack.stub().GetQueueStats(jobs_pb2.GetQueueStatsRequest(), timeout=30)
    default = next(queue.depth for queue in stats.queues if queue.queue == "default")
    assert default >= 10_000, "each retried job has its message in its queue"
    store.engine.dispose()

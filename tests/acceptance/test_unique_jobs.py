"""Unique jobs through the real gateway: 200 callers at once with one unique key get one job; the key is free
again once its window has passed; other keys are not held up; SubmitJobs likewise per job. On SQLite and on
PostgreSQL, where the key's primary key (not a read before the write) decides."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from grpc_gateway.v1 import jobs_pb2
from taskapp.store.tables import jobs_table
from tests.helpers import Stack, sql_count, wait_for

MakeStack = Callable[..., Stack]
WINDOW_SECONDS = 4


def request(key: str, n: int) -> jobs_pb2.SubmitJobRequest:
    submit = jobs_pb2.SubmitJobRequest(type="echo", unique_key=key)
    submit.payload.update({"n": n})
    submit.unique_for.FromSeconds(WINDOW_SECONDS)
    return submit


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_200_concurrent_submits_with_one_unique_key_create_one_job(
    make_stack: MakeStack, backend: str
) -> None:
    stack = make_stack(backend=backend, worker=False, scheduler=False)
    stub = stack.stub()

    def submit(key: str, n: int) -> jobs_pb2.SubmitJobResponse:
        return stub.SubmitJob(request(key, n), timeout=30)

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda n: submit("report-2026-12", n), range(200)))
        others = list(pool.map(lambda n: submit(f"other-{n % 5}", n), range(50)))

    created = [answer for answer in answers if answer.created]
    assert len(created) == 1
    assert {answer.job_id for answer in answers} == {created[0].job_id}  # the 199 get its id
    by_key: dict[int, set[str]] = {}
    for n, answer in enumerate(others):
        by_key.setdefault(n % 5, set()).add(answer.job_id)
    assert all(len(ids) == 1 for ids in by_key.values()) and sum(answer.created for answer in others) == 5
    assert sql_count(stack, jobs_table) == 6

    batch = stub.SubmitJobs(
        jobs_pb2.SubmitJobsRequest(
            jobs=[request("report-2026-12", 1), request("batch-key", 2), request("batch-key", 3)]
        ),
        timeout=30,
    )
    assert [(result.job_id == created[0].job_id, result.created) for result in batch.results][:1] == [
        (True, False)
    ]
    assert [result.created for result in batch.results][1:] == [True, False]
    assert batch.results[1].job_id == batch.results[2].job_id

    # Once the window has passed, the key makes a new job.
    def new_one() -> jobs_pb2.SubmitJobResponse | None:
        answer = submit("report-2026-12", 1000)
        return answer if answer.created else None

    later = wait_for(new_one, WINDOW_SECONDS + 10, "the key to be free")
    assert later.job_id != created[0].job_id
    assert not submit("report-2026-12", 1001).created

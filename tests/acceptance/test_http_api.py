"""The JobService over HTTP/JSON, against the real gateway, worker and scheduler: each status's HTTP twin with
its JSON error, tokens on every endpoint, and WatchJob as Server-Sent Events."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest
import schemathesis
import sqlalchemy as sa
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from bench.servers import OwnRedis
from grpc_gateway.v1 import jobs_pb2
from taskapp.jobs import JobState, Priority
from taskapp.store.engine import create_db_engine
from taskapp.store.tables import events_table, jobs_table
from tests.helpers import BIN, ROOT, Stack, wait_for

MakeStack = Callable[..., Stack]

TOKEN = "tok-http-5d1c9a77e0"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture(scope="module")
def api(make_module_stack: MakeStack) -> Stack:
    """A gateway with a token, a worker and a scheduler, for the tests that change nothing the others read."""
    return make_module_stack(TASKAPP_AUTH_TOKENS=TOKEN)


def client(stack: Stack, authorization: str | None = f"Bearer {TOKEN}") -> httpx.Client:
    headers = {"authorization": authorization} if authorization is not None else {}
    return httpx.Client(base_url=stack.http_url, headers=headers, timeout=30)


def error_of(response: httpx.Response) -> dict[str, str]:
    """The JSON error body, which holds nothing else."""
    body = response.json()
    assert list(body) == ["error"], body
    return body["error"]


def grpc_code(call: Callable[[], Any]) -> str:
    try:
        call()
    except grpc.RpcError as error:
        return error.code().name
    return "OK"


def later(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def test_each_grpc_status_comes_back_as_its_http_status_with_a_json_error(api: Stack) -> None:
    stub = api.stub()
    with client(api) as http:
        bad = {"type": "echo", "max_attempts": 0}
        answer = http.post("/v1/jobs", json=bad)
        assert (answer.status_code, error_of(answer)) == (
            400,
            {
                "code": "INVALID_ARGUMENT",
                "message": "max_attempts: must be between 1 and 100, got 0",
                "field": "max_attempts",
            },
        )
        assert (
            grpc_code(
                lambda: stub.SubmitJob(json_format.ParseDict(bad, jobs_pb2.SubmitJobRequest()), metadata=AUTH)
            )
            == "INVALID_ARGUMENT"
        )

        answer = http.get("/v1/jobs/no-such-job")
        assert (answer.status_code, error_of(answer)["code"]) == (404, "NOT_FOUND")
        assert "no-such-job" in error_of(answer)["message"]
        missing = jobs_pb2.GetJobRequest(job_id="no-such-job")
        assert grpc_code(lambda: stub.GetJob(missing, metadata=AUTH)) == "NOT_FOUND"

        first = {"job_id": "http-twin", "type": "echo", "payload": {"n": 1}, "run_at": later(3600)}
        assert http.post("/v1/jobs", json=first).json() == {
            "job_id": "http-twin",
            "state": "JOB_STATE_SCHEDULED",
            "created": True,
        }
        answer = http.post("/v1/jobs", json={**first, "payload": {"n": 2}})
        assert (answer.status_code, error_of(answer)["code"], error_of(answer)["field"]) == (
            409,
            "ALREADY_EXISTS",
            "job_id",
        )
        other = jobs_pb2.SubmitJobRequest(job_id="http-twin", type="echo")
        assert grpc_code(lambda: stub.SubmitJob(other, metadata=AUTH)) == "ALREADY_EXISTS"

        answer = http.post("/v1/jobs/http-twin:retry")  # SCHEDULED: not finished, so not retryable
        assert (answer.status_code, error_of(answer)["code"]) == (409, "FAILED_PRECONDITION")
        retry = jobs_pb2.RetryJobRequest(job_id="http-twin")
        assert grpc_code(lambda: stub.RetryJob(retry, metadata=AUTH)) == "FAILED_PRECONDITION"

        big = {"type": "echo", "payload": {"text": "x" * 300_000}}
        answer = http.post("/v1/jobs", json=big)
        assert (answer.status_code, error_of(answer)["code"], error_of(answer)["field"]) == (
            413,
            "RESOURCE_EXHAUSTED",
            "payload",
        )
        too_big = json_format.ParseDict(big, jobs_pb2.SubmitJobRequest())
        assert grpc_code(lambda: stub.SubmitJob(too_big, metadata=AUTH)) == "RESOURCE_EXHAUSTED"
        answer = http.post("/v1/jobs:batch", json={"jobs": [big] * 70})  # over 16 MiB: refused unread
        assert (answer.status_code, error_of(answer)["code"]) == (413, "RESOURCE_EXHAUSTED")

        answer = http.post("/v1/jobs", content=json.dumps(first))  # no Content-Type: application/json
        assert (answer.status_code, error_of(answer)["code"]) == (415, "INVALID_ARGUMENT")
        answer = http.post("/v1/jobs", json={"type": "echo", "run_at": "tomorrow"})
        assert (answer.status_code, error_of(answer)["field"]) == (400, "run_at")
        answer = http.get("/v1/jobs", params={"page_sise": 10})
        assert (answer.status_code, error_of(answer)["field"]) == (400, "page_sise")
    # The refused calls changed nothing.
    assert api.stub().GetJob(jobs_pb2.GetJobRequest(job_id="http-twin"), metadata=AUTH).payload["n"] == 1


def test_a_gateway_at_its_limit_answers_429_and_without_its_broker_503(
    make_stack: MakeStack, own_redis: OwnRedis
) -> None:
    stack = make_stack(
        worker=False, scheduler=False, REDIS_URL=own_redis.url, TASKAPP_MAX_CONCURRENT_RPCS="2"
    )
    with client(stack, None) as http:
        job_id = http.post("/v1/jobs", json={"type": "echo", "run_at": later(3600)}).json()["job_id"]
        streams = [http.stream("GET", f"/v1/jobs/{job_id}/events") for _ in range(2)]
        opened = [stream.__enter__() for stream in streams]  # two calls held open: the limit
        try:
            assert all(response.status_code == 200 for response in opened)
            answer = http.get(f"/v1/jobs/{job_id}")
            assert (answer.status_code, error_of(answer)["code"]) == (429, "RESOURCE_EXHAUSTED")
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)
        wait_for(lambda: http.get(f"/v1/jobs/{job_id}").status_code == 200, 10, "the streams' calls to end")

        own_redis.stop()
        answer = http.post("/v1/jobs", json={"type": "echo"})
        assert (answer.status_code, error_of(answer)["code"]) == (503, "UNAVAILABLE")
        assert "broker" in error_of(answer)["message"]
        assert grpc_code(
            lambda: stack.stub().SubmitJob(jobs_pb2.SubmitJobRequest(type="echo"), timeout=10)
        ) == ("UNAVAILABLE")


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for path, item in document["paths"].items():
        for method in item:
            yield method.upper(), path.replace("{job_id}", "some-job")


def test_every_endpoint_but_health_refuses_a_missing_or_wrong_token_with_401(api: Stack) -> None:
    with client(api, None) as anonymous:
        document = anonymous.get("/openapi.json").json()  # the document is open, as gRPC reflection is
        assert anonymous.get("/healthz").json() == {"status": "alive"}
    calls = [call for call in operations(document) if call[1] != "/healthz"]
    assert len(calls) >= 9, calls
    for authorization in (None, "Bearer not-the-token", f"Basic {TOKEN}", ""):
        with client(api, authorization) as http:
            for method, path in calls:
                answer = http.request(method, path, json={} if method == "POST" else None)
                assert answer.status_code == 401, (authorization, method, path, answer.text)
                assert answer.headers["www-authenticate"] == "Bearer"
                assert error_of(answer)["code"] == "UNAUTHENTICATED"
                assert TOKEN not in answer.text
    with client(api) as http:
        assert http.get("/v1/queues:stats").status_code == 200


def sse_events(stack: Stack, job_id: str, into: list[dict[str, Any]]) -> None:
    """Reads `/v1/jobs/{id}/events` to its end, each `job_event`'s data into `into`."""
    with client(stack) as http, http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=60) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "job_event":
                into.append(json.loads(line.removeprefix("data: ")))


def test_sse_watch_of_a_job_that_retries_once_shows_what_grpc_watch_shows(api: Stack) -> None:
    with client(api) as http:
        answer = http.post(
            "/v1/jobs", json={"type": "chatty", "payload": {"lines": 1, "fail_times": 1}, "run_at": later(5)}
        )
    job_id = answer.json()["job_id"]
    over_http: list[dict[str, Any]] = []
    reader = threading.Thread(target=sse_events, args=(api, job_id, over_http))
    reader.start()
    watch = api.stub().WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id), metadata=AUTH, timeout=60)
    over_grpc = [
        json_format.MessageToDict(
            event, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        for event in watch
    ]
    reader.join(60)
    assert not reader.is_alive(), "the event stream ended with the job"

    states = [event["state"] for event in over_grpc]
    assert states[0] == "JOB_STATE_SCHEDULED" and states[-1] == "JOB_STATE_SUCCEEDED", states
    assert "JOB_STATE_RETRYING" in states and states.count("JOB_STATE_RUNNING") == 2, states
    assert over_http == over_grpc


@pytest.fixture(scope="module")
def fuzzed(make_module_stack: MakeStack) -> Stack:
    """The gateway schemathesis calls: of its own, since CancelJobs with any filter may cancel any job."""
    return make_module_stack(TASKAPP_AUTH_TOKENS=TOKEN)


@pytest.fixture(scope="module")
def document(fuzzed: Stack) -> Any:
    """The document as the gateway serves it, for schemathesis."""
    return schemathesis.openapi.from_url(f"{fuzzed.http_url}/openapi.json")


@pytest.fixture(scope="module")
def registered_types(fuzzed: Stack) -> set[str]:
    """The job types the stack knows, as it names them when refusing another (importing the tests' handler
    module here would register them in this process, for every test that runs after)."""
    with client(fuzzed) as http:
        refusal = error_of(http.post("/v1/jobs", json={"type": "no_such_type"}))["message"]
    known = re.search(r"\(known: ([^)]*)\)", refusal)
    assert known is not None, refusal
    return set(known[1].split(", "))


def torn_rows(database_url: str, registered_types: set[str]) -> list[str]:
    """What is wrong with any job row: a field outside its rules, or a job without the event it began with."""
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as conn:
            jobs = conn.execute(sa.select(jobs_table)).mappings().all()
            first_states = dict(
                conn.execute(
                    sa.select(events_table.c.job_id, events_table.c.state).where(
                        events_table.c.seq.in_(
                            sa.select(sa.func.min(events_table.c.seq)).group_by(events_table.c.job_id)
                        )
                    )
                ).all()
            )
    finally:
        engine.dispose()
    problems = []
    for job in jobs:
        rules = {
            "state": job["state"] in {state.value for state in JobState},
            "priority": job["priority"] in {priority.value for priority in Priority},
            "type": job["type"] in registered_types,
            "payload": isinstance(job["payload"], dict),
            "max_attempts": 1 <= job["max_attempts"] <= 100,
            "timeout_seconds": 1 <= job["timeout_seconds"] <= 86_400,
            "times": job["created_at"] <= job["updated_at"],
            "first event": first_states.get(job["job_id"]) in ("QUEUED", "SCHEDULED"),
        }
        problems += [f"{job['job_id']}: {rule}" for rule, kept in rules.items() if not kept]
    return problems


#: Every operation of the committed document (`scripts/gen-openapi --check` keeps it the served one).
OPERATIONS = [
    (method.upper(), path)
    for path, item in json.loads((ROOT / "docs" / "openapi.json").read_text())["paths"].items()
    for method in item
]


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_every_endpoint_answers_as_its_document_says_and_leaves_every_row_whole(
    document: Any, fuzzed: Stack, registered_types: set[str], method: str, path: str
) -> None:
    operation = document[path][method]
    takes_input = bool(operation.body) or any(p.name != "Authorization" for p in operation.iter_parameters())
    # An operation that takes nothing has one request to make.
    examples = 30 if takes_input else 2

    @given(case=operation.as_strategy())
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def answers_as_documented(case: Any) -> None:
        # Data the schema allows may still be refused (an unregistered type, say): that check does not apply.
        case.call_and_validate(
            base_url=fuzzed.http_url,
            headers={"Authorization": f"Bearer {TOKEN}"},
            excluded_checks=[positive_data_acceptance],
            timeout=30,
        )
        assert torn_rows(fuzzed.env["DATABASE_URL"], registered_types) == []

    answers_as_documented()


def test_two_labels_and_a_created_range_list_exactly_the_matching_jobs_over_pages(api: Stack) -> None:
    suite = f"s{time.time_ns()}"  # the module's gateway holds other tests' jobs too
    with client(api) as http:

        def batch(n: int) -> list[str]:
            jobs = [
                {
                    "type": "noop",
                    "run_at": later(3600),
                    "labels": {"suite": suite, "env": ["prod", "dev"][i % 2]},
                }
                for i in range(n)
            ]
            answer = http.post("/v1/jobs:batch", json={"jobs": jobs})
            return [result["job_id"] for result in answer.json()["results"]]

        batch(10)  # before the range
        inside = batch(30)  # a batch is written at one instant
        after = batch(10)
        start = http.get(f"/v1/jobs/{inside[0]}").json()["created_at"]
        end = http.get(f"/v1/jobs/{after[0]}").json()["created_at"]
        wanted = [job_id for job_id in reversed(inside) if inside.index(job_id) % 2 == 0]

        seen: list[str] = []
        pages = 0
        query = {"labels[suite]": suite, "labels[env]": "prod", "created_after": start, "created_before": end}
        token = ""
        while True:
            page = http.get("/v1/jobs", params={**query, "page_size": 4, "page_token": token}).json()
            seen += [job["job_id"] for job in page["jobs"]]
            assert all(job["labels"] == {"suite": suite, "env": "prod"} for job in page["jobs"])
            pages += 1
            if not (token := page["next_page_token"]):
                break
    assert sorted(seen) == sorted(wanted) and len(seen) == len(set(seen)) == 15
    assert pages == 4
    # The same filter over gRPC.
    request = jobs_pb2.ListJobsRequest(labels={"suite": suite, "env": "prod"}, page_size=100)
    request.created_after.FromJsonString(start)
    request.created_before.FromJsonString(end)
    assert {job.job_id for job in api.stub().ListJobs(request, metadata=AUTH).jobs} == set(wanted)


def test_the_locust_file_loads_the_api_without_a_failure(api: Stack) -> None:
    run = subprocess.run(
        [str(BIN / "locust"), "-f", str(ROOT / "bench" / "locustfile.py"), "--host", api.http_url,
         "--headless", "-u", "4", "-r", "4", "-t", "4s", "--only-summary", "--csv", str(api.workdir / "locust")],
        env={**os.environ, "TASKAPP_TOKEN": TOKEN}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    stats = {row["Name"]: row for row in csv.DictReader((api.workdir / "locust_stats.csv").open())}
    assert int(stats["/v1/jobs"]["Request Count"]) > 0 and int(stats["Aggregated"]["Failure Count"]) == 0, (
        stats
    )


def test_schedules_over_http(api: Stack) -> None:
    definition = {"name": "http-tick", "interval": "3600s", "job": {"type": "noop"}, "paused": True}
    with client(api) as http:
        created = http.post("/v1/schedules", json=definition)
        assert created.status_code == 200, created.text
        assert (created.json()["created"], created.json()["schedule"]["paused"]) == (True, True)
        assert http.post("/v1/schedules", json=definition).json()["changed"] is False
        assert [s["name"] for s in http.get("/v1/schedules").json()["schedules"]] == ["http-tick"]
        assert http.post("/v1/schedules/http-tick:resume").json()["paused"] is False
        moved = http.put("/v1/schedules/http-tick", json={**definition, "interval": "1800s", "name": ""})
        assert moved.json()["changed"] is True and moved.json()["schedule"]["interval"] == "1800s"
        renamed = http.put("/v1/schedules/http-tick", json={**definition, "name": "other"})
        assert (renamed.status_code, error_of(renamed)["field"]) == (400, "name")
        fired = http.post("/v1/schedules/http-tick:trigger").json()
        assert fired["created"] and fired["job_id"].startswith("schedule.http-tick.manual.")
        assert http.get(f"/v1/jobs/{fired['job_id']}").json()["labels"] == {"schedule": "http-tick"}
        assert http.delete("/v1/schedules/http-tick").json() == {"deleted": True}
        missing = http.get("/v1/schedules/http-tick")
        assert (missing.status_code, error_of(missing)["code"]) == (404, "NOT_FOUND")
        bad = http.post("/v1/schedules", json={**definition, "interval": "1.5s"})
        assert (bad.status_code, error_of(bad)["field"]) == (400, "interval")

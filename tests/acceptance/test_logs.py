"""Structured logs: with TASKAPP_LOG_FORMAT=json every worker log line about a job is a JSON object
carrying the job's id (and its type), and the gateway, scheduler and exporter log JSON too."""

from __future__ import annotations

import json
from collections.abc import Callable

from grpc_gateway.v1 import jobs_pb2
from tests.helpers import Stack, submit, wait_for

MakeStack = Callable[..., Stack]


def test_json_logs_carry_the_job_id_on_every_line_about_a_job(make_stack: MakeStack) -> None:
    stack = make_stack(TASKAPP_LOG_FORMAT="json")
    stack.start("exporter")
    ids = [
        submit(stack, "echo", {"secret": "echo-payload-s3cret"}),
        submit(stack, "chatty", {"lines": 2, "fail_times": 1}, max_attempts=2),
        submit(stack, "fail", {"permanent": True}),
    ]
    for job_id in ids:
        assert stack.wait_terminal(job_id).state in (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED)
    wait_for(lambda: stack.log("exporter").strip(), 30, "the exporter to log")
    stack.stop_all()

    assert "echo-payload-s3cret" not in stack.log("worker"), "no payload or result in the log"
    about_jobs = 0
    for line in stack.log("worker").splitlines():
        mentioned = [job_id for job_id in ids if job_id in line]
        if not mentioned:
            continue
        record = json.loads(line)
        assert record["job_id"] == mentioned[0], line
        assert record["job_type"] in ("echo", "chatty", "fail"), line
        about_jobs += 1
    assert about_jobs >= 6, "received and finished lines for each job, at least"
    handler_lines = [json.loads(line) for line in stack.log("worker").splitlines() if "of attempt" in line]
    assert {(record["job_id"], record["attempt"]) for record in handler_lines} == {(ids[1], 1), (ids[1], 2)}
    for name in ("gateway", "scheduler"):
        records = [json.loads(line) for line in stack.log(name).splitlines() if line.strip()]
        assert records and all({"time", "level", "message"} <= record.keys() for record in records), name
    # celery-exporter logs through loguru, whose JSON puts the fields under "record".
    exported = [json.loads(line)["record"] for line in stack.log("exporter").splitlines() if line.strip()]
    assert exported and all({"time", "level", "message"} <= record.keys() for record in exported)

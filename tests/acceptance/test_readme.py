"""README's promises: its grpcurl lines work as written, and its run command runs the service."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_gateway.v1 import jobs_pb2
from tests.helpers import BIN, ROOT, RedisDatabases, Stack, free_port, wait_for

README_ADDRESS = "127.0.0.1:50051"
README_HTTP_ADDRESS = "127.0.0.1:8080"


def readme_lines(tool: str, heading: str = "Try it") -> list[str]:
    """The lines of README's section `heading` that run `tool`."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    lines = [line for block in blocks for line in block.splitlines() if line.startswith(f"{tool} ")]
    assert lines, f"README's {heading!r} section has {tool} lines"
    return lines


def run_line(line: str, stack: Stack) -> str:
    """Run one README line through bash, as a user would paste it; only the addresses are the test's own."""
    line = line.replace(README_ADDRESS, stack.address).replace(
        README_HTTP_ADDRESS, stack.env["TASKAPP_HTTP_ADDR"]
    )
    result = subprocess.run(
        ["bash", "-c", line],
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, (line, result.stderr)
    return result.stdout


def test_readme_grpcurl_and_curl_examples_run_as_written(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    lines = readme_lines("grpcurl")
    rpcs = {line.split()[-1] for line in lines}
    for rpc in ("SubmitJob", "GetJob", "CancelJob", "ListJobs"):
        assert f"taskapp.v1.JobService/{rpc}" in rpcs, f"README shows {rpc}"
    outputs = []
    for line in lines:
        outputs.append(run_line(line, stack))
        if "SubmitJob" in line and "welcome-1" in line:
            stack.wait_terminal("welcome-1")
    by_rpc = dict(zip([line.split()[-1] for line in lines], outputs, strict=True))
    assert "taskapp.v1.JobService" in outputs[0]
    job = json.loads(by_rpc["taskapp.v1.JobService/GetJob"])
    assert job["state"] == "JOB_STATE_SUCCEEDED" and job["result"] == {"hello": "world"}
    assert json.loads(by_rpc["taskapp.v1.JobService/CancelJob"]) == {
        "cancelled": False,
        "state": "JOB_STATE_SUCCEEDED",
    }
    listed = json.loads(by_rpc["taskapp.v1.JobService/ListJobs"])
    assert [j["job_id"] for j in listed["jobs"]] == ["welcome-1"]
    assert json.loads(by_rpc["grpc.health.v1.Health/Check"]) == {"status": "SERVING"}
    watched = json.loads(by_rpc["taskapp.v1.JobService/WatchJob"])
    assert (watched["job_id"], watched["state"]) == ("welcome-1", "JOB_STATE_SUCCEEDED")
    assert json.loads(by_rpc["taskapp.v1.JobService/GetJobLogs"]) == {}, "echo logs nothing"
    stats = json.loads(by_rpc["taskapp.v1.JobService/GetQueueStats"])
    # int64 fields are strings in protobuf's JSON mapping.
    assert [(queue["queue"], queue["depth"]) for queue in stats["queues"]] == [
        ("critical", "0"), ("high", "0"), ("default", "0"), ("low", "0")
    ]  # fmt: skip
    assert (stats["dead_letter"], stats["scheduled"]) == ("0", "0")
    assert len(stats["workers"]) == 1

    curl_lines = readme_lines("curl")
    assert len(curl_lines) == len(lines), "a curl twin for each grpcurl line"
    said = [run_line(line, stack) for line in curl_lines]
    document, submitted, job, events, logs, cancelled, listed, critical, stats, health = said
    assert json.loads(document)["openapi"].startswith("3.1")
    assert json.loads(submitted) == {"job_id": "welcome-2", "state": "JOB_STATE_QUEUED", "created": True}
    assert json.loads(job)["job_id"] == "welcome-2"
    # The events stream ran until the job ended; by then GetJob shows what README says.
    data = [line.removeprefix("data: ") for line in events.splitlines() if line.startswith("data: ")]
    assert "event: job_event" in events and data, events
    last = json.loads(data[-1])
    assert (last["job_id"], last["state"]) == ("welcome-2", "JOB_STATE_SUCCEEDED")
    job = json.loads(run_line(curl_lines[2], stack))
    assert (job["state"], job["result"]) == ("JOB_STATE_SUCCEEDED", {"hello": "http"})
    assert json.loads(logs) == {"lines": []}
    assert json.loads(cancelled) == {"cancelled": False, "state": "JOB_STATE_SUCCEEDED"}
    assert [j["job_id"] for j in json.loads(listed)["jobs"]] == ["welcome-2", "welcome-1"]
    assert json.loads(critical)["state"] == "JOB_STATE_QUEUED"
    assert [queue["queue"] for queue in json.loads(stats)["queues"]] == ["critical", "high", "default", "low"]
    assert json.loads(health) == {"status": "alive"}


def test_run_script_serves_jobs_and_stops_cleanly(tmp_path: Path, redis_databases: RedisDatabases) -> None:
    redis_url = redis_databases.acquire()
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'run.db'}",
        "REDIS_URL": redis_url,
        "TASKAPP_GRPC_ADDR": address,
        "TASKAPP_WORKER_CONCURRENCY": "1",
        "TASKAPP_FLOWER_ADDR": f"127.0.0.1:{free_port()}",
        "TASKAPP_FLOWER_DB": str(tmp_path / "flower.db"),
        "TASKAPP_METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "TASKAPP_HTTP_ADDR": f"127.0.0.1:{free_port()}",
        "TASKAPP_WORKER_METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "TASKAPP_EXPORTER_ADDR": f"127.0.0.1:{free_port()}",
    }
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [str(ROOT / "scripts" / "run")], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        channel = grpc.insecure_channel(address)

        def serving() -> bool:
            try:
                check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return check.status == health_pb2.HealthCheckResponse.SERVING

        wait_for(serving, 120, "scripts/run to serve")
        stack = Stack(workdir=tmp_path, env=env, address=address)
        request = jobs_pb2.SubmitJobRequest(type="echo")
        request.payload.update({"via": "scripts/run"})
        job_id = stack.stub().SubmitJob(request, timeout=10).job_id
        job = stack.wait_terminal(job_id, timeout=60)
        assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
        assert job.result.struct_value["via"] == "scripts/run"
        channel.close()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        exit_code = process.wait(60)
        redis_databases.release(redis_url)
    output = (tmp_path / "run.log").read_text()
    assert "job database is at the latest schema" in output
    assert exit_code in (0, -signal.SIGTERM), output


def test_run_script_says_clearly_when_redis_is_unreachable(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'run.db'}",
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    result = subprocess.run(
        [str(ROOT / "scripts" / "run")], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "is unreachable" in result.stderr and "Traceback" not in result.stderr


def test_readme_schedule_examples_run_as_written(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    """The grpcurl lines of "Recurring schedules", then its schedules file through `taskapp schedules apply`."""
    stack = make_stack()
    outputs = [run_line(line, stack) for line in readme_lines("grpcurl", "Recurring schedules")]
    created = [json.loads(output) for output in outputs[:2]]
    assert [(answer["schedule"]["name"], answer["created"]) for answer in created] == [
        ("nightly-report", True),
        ("heartbeat", True),
    ]
    assert created[0]["schedule"]["time_zone"] == "Europe/Berlin"
    assert all(job["labels"] == {"schedule": "heartbeat"} for job in json.loads(outputs[2]).get("jobs", []))
    text = (ROOT / "README.md").read_text().split("## Recurring schedules", 1)[1]
    (schedules_file,) = re.findall(r"```toml\n(.*?)```", text.split("\n## ", 1)[0], re.S)
    (tmp_path / "schedules.toml").write_text(schedules_file)
    applied = run_line(
        f"taskapp --address {stack.address} schedules apply {tmp_path / 'schedules.toml'}", stack
    )
    assert sorted(applied.splitlines()) == ["heartbeat: updated", "nightly-report: updated"]


def test_readme_flow_control_examples_run_as_written(make_stack: Callable[..., Stack]) -> None:
    """The grpcurl lines of "Limits, pauses, and why a job waits", in order."""
    stack = make_stack()
    submitted, limited, paused, resumed, explained = (
        json.loads(run_line(line, stack))
        for line in readme_lines("grpcurl", "Limits, pauses, and why a job waits")
    )
    assert (submitted["job_id"], submitted["created"]) == ("mail-42", True)
    assert (limited["type"], limited["max_running"], limited["rate"], limited["rate_interval"]) == (
        "echo",
        10,
        5,
        "1s",
    )
    assert (paused["queue"], paused.get("paused")) == ("PRIORITY_LOW", True)
    assert resumed.get("paused", False) is False
    assert explained["job_id"] == "mail-42" and explained["reason"]

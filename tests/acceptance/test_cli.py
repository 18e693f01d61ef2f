"""Issue "Seeing jobs": the `taskapp` console script's job commands, run as a person or a script runs them."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.helpers import BIN, Stack, free_port
from tests.loopback import Reply, scripted_http_server

MakeStack = Callable[..., Stack]
TAKEN = {"QUEUED", "RUNNING", "SUCCEEDED"}


def env_for(stack: Stack | None) -> dict[str, str]:
    """The stack's environment with TASKAPP_ADDRESS on its gateway; with no stack, a port nobody listens on."""
    if stack is None:
        return {"PATH": os.environ["PATH"], "TASKAPP_ADDRESS": f"127.0.0.1:{free_port()}"}
    return {**stack.env, "TASKAPP_ADDRESS": stack.address}


def taskapp(
    stack: Stack | None, *args: str, timeout: float = 60, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "taskapp"), *args],
        env={**env_for(stack), **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_in_terminal(stack: Stack, *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run `taskapp` with its output on a pseudo-terminal, reading it as it comes so the command never blocks."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [str(BIN / "taskapp"), *args],
        env={**env_for(stack), "TERM": "xterm-256color"},
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0 and select.select([controller], [], [], left)[0]:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the command exited and closed the terminal.
                break
            output += chunk
        return process.wait(timeout=5), output.decode(errors="replace")
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait()


def test_operations_commands_are_still_there() -> None:
    result = taskapp(None, "--help")
    assert result.returncode == 0
    for command in ("db", "ping-redis", "gateway", "scheduler", "reconcile"):
        assert f"  {command} " in result.stdout, command
    for command in ("submit", "get", "cancel", "retry", "list", "watch", "logs", "stats"):
        assert f"  {command} " in result.stdout, command


def test_bad_options_are_usage_errors() -> None:
    for args, named in (
        (("submit", "echo", "--payload", "{not json"), "--payload"),
        (("submit", "echo", "--payload", "[1, 2]"), "--payload"),
        (("submit", "echo", "--run-at", "next tuesday"), "--run-at"),
        (("submit", "echo", "--priority", "urgent"), "--priority"),
        (("list", "--state", "DONE"), "--state"),
        (("stats", "--address", "gw1.internal:50051,gw2.internal:50051"), "use one DNS name"),
    ):
        result = taskapp(None, *args)
        assert result.returncode == 2, args
        assert named in result.stderr, args


def test_help_shows_the_connection_options() -> None:
    shown = (
        "--address HOST:PORT",
        "TASKAPP_ADDRESS",
        "127.0.0.1:50051",
        "--token TOKEN",
        "TASKAPP_TOKEN",
        "--json",
    )
    for args in (("--help",), ("stats", "--help"), ("submit", "--help")):
        result = taskapp(None, *args)
        assert result.returncode == 0 and all(text in result.stdout for text in shown), args
    assert "--address" not in taskapp(None, "ping-redis", "--help").stdout


def test_unreachable_gateway_exits_1_with_a_clear_message() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = taskapp(None, "get", "some-job", "--address", address)
    assert result.returncode == 1
    assert result.stderr.startswith(f"taskapp: UNAVAILABLE: gateway at {address}: ")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_every_job_command_takes_the_address_before_its_name() -> None:
    address = f"127.0.0.1:{free_port()}"
    by_id = ([name, "some-job"] for name in ("get", "cancel", "retry", "watch", "logs"))
    for command in (["submit", "echo"], ["list"], ["stats"], *by_id):
        result = taskapp(None, "--address", address, *command)
        assert result.returncode == 1, command
        assert result.stderr.startswith(f"taskapp: UNAVAILABLE: gateway at {address}: "), command


def test_connection_options_before_the_subcommand_and_after_it_which_wins(make_stack: MakeStack) -> None:
    token = "tok-cli-options"
    stack = make_stack(worker=False, TASKAPP_AUTH_TOKENS=token)
    nobody = f"127.0.0.1:{free_port()}"

    before = taskapp(
        stack, "--address", stack.address, "--token", token, "--json", "stats", TASKAPP_ADDRESS=nobody
    )
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["workers"] == []

    after = taskapp(
        stack, "--address", nobody, "--token", "wrong", "stats", "--address", stack.address, "--token", token
    )
    assert after.returncode == 0, after.stderr
    assert "workers: none answered" in after.stdout
    overridden = taskapp(stack, "--address", stack.address, "stats", "--address", nobody, TASKAPP_TOKEN=token)
    assert overridden.returncode == 1
    assert overridden.stderr.startswith(f"taskapp: UNAVAILABLE: gateway at {nobody}: ")

    assert taskapp(stack, "stats", TASKAPP_TOKEN=token).returncode == 0
    assert taskapp(stack, "stats").stderr.startswith("taskapp: UNAUTHENTICATED: ")
    # Given before the subcommand, an option still beats the environment.
    assert taskapp(stack, "--token", "wrong", "stats", TASKAPP_TOKEN=token).stderr.startswith(
        "taskapp: UNAUTHENTICATED: "
    )


@pytest.mark.slow
def test_get_cancel_retry_and_list_human_and_json(make_stack: MakeStack) -> None:
    stack = make_stack()
    submitted = taskapp(stack, "submit", "echo", "--payload", '{"a": 1}', "--id", "cli-1", "--json")
    assert submitted.returncode == 0, submitted.stderr
    assert json.loads(submitted.stdout) == {"job_id": "cli-1", "state": "QUEUED", "created": True}
    again = taskapp(stack, "submit", "echo", "--payload", '{"a": 1}', "--id", "cli-1")
    assert again.returncode == 0 and again.stdout.startswith("job cli-1: ")
    stack.wait_terminal("cli-1")

    got = taskapp(stack, "get", "cli-1", "--json").stdout
    assert '"payload": {"a": 1}' in got  # As submitted, though protobuf carries the number as a double.
    job = json.loads(got)
    assert (job["job_id"], job["type"], job["state"], job["priority"]) == (
        "cli-1",
        "echo",
        "SUCCEEDED",
        "default",
    )
    assert job["payload"] == job["result"] == {"a": 1}
    assert datetime.fromisoformat(job["created_at"]) <= datetime.fromisoformat(job["finished_at"])
    assert "seq" not in job and "fingerprint" not in job

    human = taskapp(stack, "get", "cli-1")
    assert human.returncode == 0
    assert "SUCCEEDED" in human.stdout and "cli-1" in human.stdout and '{"a": 1}' in human.stdout

    cancel = taskapp(stack, "cancel", "cli-1", "--json")
    assert json.loads(cancel.stdout) == {"cancelled": False, "state": "SUCCEEDED"}
    assert taskapp(stack, "cancel", "cli-1").stdout == "job cli-1 not cancelled: it is SUCCEEDED\n"

    too_late = taskapp(stack, "submit", "noop", "--run-at", "2099-01-01T00:00:00Z")
    assert too_late.returncode == 1 and too_late.stderr.startswith("taskapp: INVALID_ARGUMENT: run_at")
    in_an_hour = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    scheduled = taskapp(
        stack, "submit", "noop", "--id", "cli-2", "--priority", "high", "--run-at", in_an_hour,
        "--label", "env=prod", "--label", "team=ml",
    )  # fmt: skip
    assert scheduled.stdout == "job cli-2: SCHEDULED\n"
    assert json.loads(taskapp(stack, "get", "cli-2", "--json").stdout)["labels"] == {
        "env": "prod",
        "team": "ml",
    }
    labelled = json.loads(
        taskapp(stack, "list", "--label", "team=ml", "--label", "env=prod", "--json").stdout
    )
    assert [job["job_id"] for job in labelled["jobs"]] == ["cli-2"]
    assert taskapp(stack, "list", "--label", "env").returncode == 2, "KEY=VALUE, or a bad option"
    assert (
        taskapp(stack, "submit", "noop", "--id", "cli-3", "--timeout", "5", "--max-attempts", "1").returncode
        == 0
    )
    assert json.loads(taskapp(stack, "get", "cli-3", "--json").stdout)["timeout_seconds"] == 5

    page = json.loads(taskapp(stack, "list", "--type", "noop", "--page-size", "1", "--json").stdout)
    assert [job["job_id"] for job in page["jobs"]] == ["cli-3"] and page["next_page_token"]
    rest = taskapp(
        stack, "list", "--type", "noop", "--page-size", "1", "--page-token", page["next_page_token"], "--json"
    )
    assert [job["job_id"] for job in json.loads(rest.stdout)["jobs"]] == ["cli-2"]
    high = json.loads(taskapp(stack, "list", "--priority", "high", "--json").stdout)
    assert [(job["job_id"], job["priority"]) for job in high["jobs"]] == [("cli-2", "high")]
    succeeded = json.loads(taskapp(stack, "list", "--state", "succeeded", "--type", "echo", "--json").stdout)
    assert [job["job_id"] for job in succeeded["jobs"]] == ["cli-1"]

    table = taskapp(stack, "list")
    assert table.returncode == 0
    assert all(job_id in table.stdout for job_id in ("cli-1", "cli-2", "cli-3"))

    retry = taskapp(stack, "retry", "cli-1")
    assert retry.returncode == 1
    assert retry.stderr.startswith("taskapp: FAILED_PRECONDITION: ")


def test_a_payload_too_large_for_an_argument_comes_from_a_file_or_stdin(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    stack = make_stack(worker=False)
    payload = {"rows": [{"i": i, "text": f"é{i:05}" * 20} for i in range(1200)]}
    document = json.dumps(payload, ensure_ascii=False)
    assert 128 * 1024 < len(document.encode()) < 256 * 1024  # over a shell argument, under the job's limit
    (tmp_path / "payload.json").write_text(document, encoding="utf-8")

    for args, stdin in (
        (["--payload", f"@{tmp_path / 'payload.json'}"], None),
        (["--payload", "-"], document),
    ):
        job_id = taskapp(stack, "submit", "echo", *args, "--quiet", stdin=stdin).stdout.strip()
        assert json.loads(taskapp(stack, "get", job_id, "--json").stdout)["payload"] == payload, args

    missing = taskapp(stack, "submit", "echo", "--payload", f"@{tmp_path / 'missing.json'}")
    assert missing.returncode == 2
    assert "'--payload'" in missing.stderr and "missing.json': No such file" in missing.stderr


def test_run_at_without_an_offset_is_local_time(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False)
    local = timezone(timedelta(hours=5, minutes=30))
    in_an_hour = datetime.now(local).replace(microsecond=0) + timedelta(hours=1)
    naive = in_an_hour.replace(tzinfo=None).isoformat()
    submitted = taskapp(stack, "submit", "noop", "--run-at", naive, "--json", TZ="TEST-05:30")
    job = json.loads(taskapp(stack, "get", json.loads(submitted.stdout)["job_id"], "--json").stdout)
    assert datetime.fromisoformat(job["scheduled_at"]) == in_an_hour


def test_unknown_job_exits_1_naming_it(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False)
    for command in ("get", "cancel", "retry", "watch", "logs"):
        result = taskapp(stack, command, "no-such-job")
        assert result.returncode == 1, command
        assert result.stderr == "taskapp: NOT_FOUND: job 'no-such-job' not found\n", command
        assert result.stdout == "", command


# The tests below need WatchJob, GetJobLogs and GetQueueStats on the gateway.


def test_submit_watch_prints_the_id_then_each_state_and_exits_0(make_stack: MakeStack) -> None:
    stack = make_stack()
    result = taskapp(stack, "submit", "echo", "--payload", '{"a":1}', "--watch")
    assert result.returncode == 0, result.stderr
    first, *events = result.stdout.splitlines()
    job_id = first.split()[1].rstrip(":")
    assert first == f"job {job_id}: QUEUED"
    states = [line.split()[0] for line in events]
    assert states[-1] == "SUCCEEDED" and set(states) <= TAKEN
    assert all(" attempt " in line for line in events)
    assert json.loads(taskapp(stack, "get", job_id, "--json").stdout)["result"] == {"a": 1}


def test_submit_quiet_prints_the_id_alone_for_a_script_to_capture(make_stack: MakeStack) -> None:
    stack = make_stack()
    result = taskapp(stack, "submit", "echo", "-q", "--id", "quiet-1", "--json")
    assert (result.returncode, result.stdout, result.stderr) == (0, "quiet-1\n", "")

    script = 'id=$(taskapp submit --quiet echo --payload \'{"b": 2}\') && taskapp get "$id" --json'
    captured = subprocess.run(
        ["bash", "-c", script], env=env_for(stack), capture_output=True, text=True, timeout=60
    )
    assert captured.returncode == 0, captured.stderr
    assert json.loads(captured.stdout)["payload"] == {"b": 2}

    watched = taskapp(stack, "submit", "echo", "-q", "--watch", "--id", "quiet-2")
    assert (watched.returncode, watched.stdout) == (0, "quiet-2\n")
    failed = taskapp(
        stack, "submit", "fail", "--payload", '{"permanent": true}', "-q", "--watch", "--id", "q-3"
    )
    assert (failed.returncode, failed.stdout) == (3, "q-3\n")


def test_submit_watch_of_a_failing_job_exits_3(make_stack: MakeStack) -> None:
    stack = make_stack()
    result = taskapp(stack, "submit", "fail", "--payload", '{"permanent": true}', "--watch")
    assert result.returncode == 3, result.stderr
    last = result.stdout.splitlines()[-1]
    assert last.startswith("FAILED ") and "failed permanently" in last


def test_watch_json_lines_live_terminal_and_logs(make_stack: MakeStack) -> None:
    stack = make_stack()
    with scripted_http_server() as server:
        server.script(Reply(200, b"ok"))
        submitted = taskapp(
            stack, "submit", "http_call", "--payload", json.dumps({"url": server.url()}), "--json"
        )
        job_id = json.loads(submitted.stdout)["job_id"]

        watched = taskapp(stack, "watch", job_id, "--json")
        assert watched.returncode == 0, watched.stderr
        events = [json.loads(line) for line in watched.stdout.splitlines()]
        assert {event["job_id"] for event in events} == {job_id}
        assert events[-1]["state"] == "SUCCEEDED" and {event["state"] for event in events} <= TAKEN
        assert all(datetime.fromisoformat(event["at"]).tzinfo for event in events)

        code, screen = run_in_terminal(stack, "watch", job_id)
        assert code == 0, screen
        assert f"job {job_id}: SUCCEEDED" in screen and "\x1b[" in screen

        logs = json.loads(taskapp(stack, "logs", job_id, "--json").stdout)
        assert [(line["attempt"], line["level"]) for line in logs if "answered 200" in line["message"]] == [
            (1, "INFO")
        ]
        human = taskapp(stack, "logs", job_id)
        assert human.returncode == 0 and "answered 200" in human.stdout and "INFO" in human.stdout


def test_stats_json_and_human(make_stack: MakeStack) -> None:
    stack = make_stack(worker=False)
    assert taskapp(stack, "submit", "noop", "--priority", "low").returncode == 0
    stats = json.loads(taskapp(stack, "stats", "--json").stdout)
    assert stats == {
        "depths": {"critical": 0, "high": 0, "default": 0, "low": 1},
        "dead_letter": 0,
        "scheduled": 0,
        "workers": [],
    }
    human = taskapp(stack, "stats")
    assert human.returncode == 0
    assert "low" in human.stdout and "workers: none answered" in human.stdout

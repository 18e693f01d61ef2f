"""The built-in `http_call` and `email` handlers run through the real gateway and worker
against real servers on loopback, with retries and permanent failures decided by what those servers answer."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.json_format import MessageToDict

from grpc_gateway.v1 import jobs_pb2
from tests.helpers import Stack, dead_letters, submit
from tests.loopback import Reply, scripted_http_server, smtp_mailbox

MakeStack = Callable[..., Stack]


def test_http_call_retries_5xx_and_succeeds_on_the_third_attempt(make_stack: MakeStack) -> None:
    stack = make_stack()
    with scripted_http_server() as server:
        server.script(Reply(500, b"down"), Reply(500, b"still down"), Reply(200, b"ok"))

        job_id = submit(
            stack, "http_call", {"url": server.url(), "method": "POST", "body": {"n": 1}}, max_attempts=3
        )
        job = stack.wait_terminal(job_id)

        assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_SUCCEEDED, 3)
        assert MessageToDict(job.result)["body"] == "ok"
        assert [request.method for request in server.requests] == ["POST", "POST", "POST"]


def test_http_call_404_fails_at_once(make_stack: MakeStack) -> None:
    stack = make_stack()
    with scripted_http_server() as server:
        server.script(Reply(404, b"no such hook"))

        job_id = submit(stack, "http_call", {"url": server.url()}, max_attempts=5)
        job = stack.wait_terminal(job_id)

        assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_FAILED, 1)
        assert "404" in job.last_error
        assert len(server.requests) == 1
        assert dead_letters(stack) == 0


def test_email_is_delivered_once(make_stack: MakeStack) -> None:
    with smtp_mailbox() as (mailbox, port):
        stack = make_stack(TASKAPP_SMTP_URL=f"smtp://127.0.0.1:{port}")

        job_id = submit(
            stack, "email", {"to": ["ops@example.com"], "subject": "Nightly report", "body": "All green.\n"}
        )
        job = stack.wait_terminal(job_id)

        assert (job.state, job.attempts) == (jobs_pb2.JOB_STATE_SUCCEEDED, 1)
        assert MessageToDict(job.result) == {"accepted": ["ops@example.com"]}
        [envelope] = mailbox.messages
        assert envelope.rcpt_tos == ["ops@example.com"]
        assert b"Subject: Nightly report" in (envelope.original_content or b"")

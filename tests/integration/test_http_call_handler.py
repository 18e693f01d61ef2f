"""`http_call` against a real HTTP server on loopback that answers a scripted sequence of replies."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pydantic
import pytest

from handlers.http_call import MAX_BODY_BYTES, HttpCallPayload, HttpCallRetryable, http_call
from taskapp.errors import PermanentError
from taskapp.registry import JobContext, load_handlers
from tests.loopback import Reply, ScriptedServer, scripted_http_server

SECRET = "s3cr3t-token-value"


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with scripted_http_server() as scripted:
        yield scripted


def call(payload: dict[str, Any], attempt: int = 1) -> Any:
    job = JobContext(job_id="t", attempt=attempt, logger=logging.getLogger("t"))
    return http_call(HttpCallPayload.model_validate(payload), job)


def test_registered_as_builtin_with_its_retryable_error() -> None:
    registered = load_handlers().get("http_call")
    assert registered is not None
    assert registered.func is http_call
    assert registered.retry_on == (HttpCallRetryable,)


def test_2xx_returns_status_headers_and_body(server: ScriptedServer) -> None:
    server.script(Reply(201, b'{"id": 7}', headers={"Content-Type": "application/json", "X-Trace": "abc"}))

    result = call({"url": server.url("/things?x=1"), "headers": {"Authorization": "Bearer t"}})

    assert result["status"] == 201
    assert result["body"] == '{"id": 7}'
    assert result["headers"]["x-trace"] == "abc"
    assert json.dumps(result)
    [request] = server.requests
    assert (request.method, request.path) == ("GET", "/things?x=1")
    assert request.headers["authorization"] == "Bearer t"


def test_json_body_is_sent_as_json(server: ScriptedServer) -> None:
    server.script(Reply(200))
    body = {"name": "ünïcode", "items": [1, 2, {"deep": None}]}

    call({"url": server.url(), "method": "POST", "body": body})

    [request] = server.requests
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == body


def test_json_array_body_is_sent_as_json(server: ScriptedServer) -> None:
    server.script(Reply(200))

    call({"url": server.url(), "method": "PUT", "body": [1, "two"]})

    assert json.loads(server.requests[0].body) == [1, "two"]
    assert server.requests[0].headers["content-type"] == "application/json"


def test_string_body_is_sent_verbatim_with_the_callers_content_type(server: ScriptedServer) -> None:
    server.script(Reply(204))

    result = call(
        {
            "url": server.url(),
            "method": "PATCH",
            "body": "a=1&b=é",
            "headers": {"Content-Type": "application/x-www-form-urlencoded"},
        }
    )

    assert result["status"] == 204
    [request] = server.requests
    assert request.body == "a=1&b=é".encode()
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"


def test_5xx_is_retryable_until_the_server_recovers(server: ScriptedServer) -> None:
    server.script(Reply(500), Reply(503), Reply(200, b"done"))

    with pytest.raises(HttpCallRetryable, match="500"):
        call({"url": server.url()}, attempt=1)
    with pytest.raises(HttpCallRetryable, match="503"):
        call({"url": server.url()}, attempt=2)
    result = call({"url": server.url()}, attempt=3)

    assert result["body"] == "done"
    assert len(server.requests) == 3


def test_404_fails_permanently(server: ScriptedServer) -> None:
    server.script(Reply(404, b"nope"))

    with pytest.raises(PermanentError, match="404"):
        call({"url": server.url(), "method": "DELETE"})
    assert server.requests[0].method == "DELETE"


def test_redirect_is_not_followed_and_fails_permanently(server: ScriptedServer) -> None:
    server.script(Reply(302, headers={"Location": server.url("/elsewhere")}), Reply(200))

    with pytest.raises(PermanentError, match="302"):
        call({"url": server.url()})
    assert [request.path for request in server.requests] == ["/hook"]


def test_secrets_stay_out_of_errors_and_logs(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.script(Reply(500))
    url = server.url().replace("http://", f"http://user:{SECRET}@")
    caplog.set_level(logging.DEBUG)

    with pytest.raises(HttpCallRetryable) as raised:
        call(
            {
                "url": url,
                "method": "POST",
                "headers": {"Authorization": f"Bearer {SECRET}"},
                "body": {"password": SECRET},
            }
        )

    assert f"POST 127.0.0.1:{server.httpd.server_address[1]}/hook" in str(raised.value)
    assert SECRET not in str(raised.value)
    assert caplog.records
    assert SECRET not in caplog.text
    [request] = server.requests
    assert request.headers["authorization"] == f"Bearer {SECRET}"


def test_errors_and_logs_name_the_port_of_the_url(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.script(Reply(503), Reply(404))
    target = f"GET 127.0.0.1:{server.httpd.server_address[1]}/x"
    caplog.set_level(logging.INFO)

    with pytest.raises(HttpCallRetryable) as retryable:
        call({"url": server.url("/x")})
    with pytest.raises(PermanentError) as permanent:
        call({"url": server.url("/x")})

    assert str(retryable.value) == f"{target}: server error 503"
    assert str(permanent.value).startswith(f"{target}: answered 404")
    assert [record.getMessage() for record in caplog.records if record.name == "t"] == [
        f"{target} answered 503",
        f"{target} answered 404",
    ]


def test_url_credentials_are_sent_as_basic_auth(server: ScriptedServer) -> None:
    server.script(Reply(200))

    call({"url": server.url().replace("http://", "http://us%40er:p%40ss@")})

    assert server.requests[0].headers["authorization"] == "Basic dXNAZXI6cEBzcw=="  # us@er:p@ss


def test_connection_refused_is_retryable() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = closed.getsockname()[1]
        with pytest.raises(HttpCallRetryable, match="ConnectError"):
            call({"url": f"http://127.0.0.1:{port}/", "timeout": 5})


def test_timeout_is_retryable(server: ScriptedServer) -> None:
    server.script(Reply(200, stall=True))

    started = time.monotonic()
    with pytest.raises(HttpCallRetryable, match="ReadTimeout"):
        call({"url": server.url(), "timeout": 0.3})
    assert time.monotonic() - started < 5


def test_timeout_bounds_a_trickling_body(server: ScriptedServer) -> None:
    server.script(Reply(200, b"x" * 1000, gap=0.2))

    started = time.monotonic()
    with pytest.raises(HttpCallRetryable, match="timeout"):
        call({"url": server.url(), "timeout": 0.5})
    assert time.monotonic() - started < 1.5


def test_body_is_truncated_to_64_kib_without_splitting_a_character(server: ScriptedServer) -> None:
    server.script(
        Reply(200, b"a" * 100_000),
        Reply(200, "é".encode() * 50_000 + b"!", headers={"Content-Type": "text/plain; charset=utf-8"}),
    )

    ascii_body = call({"url": server.url()})["body"]
    accented_body = call({"url": server.url()})["body"]

    assert ascii_body == "a" * MAX_BODY_BYTES
    assert accented_body == "é" * (MAX_BODY_BYTES // 2)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"url": "ftp://example.com/file"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"method": "TRACE"}, "method"),
        ({"method": "get"}, "method"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": 301}, "timeout"),
        ({"body": 5}, "body"),
        ({"headers": {"X-Bad": "a\r\nInjected: 1"}}, "headers"),
        ({"headers": {"Bad Name": "v"}}, "headers"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_payload_validation_rejects(change: dict[str, Any], field: str) -> None:
    with pytest.raises(pydantic.ValidationError) as raised:
        HttpCallPayload.model_validate({"url": "https://example.com/hook", **change})
    assert raised.value.errors()[0]["loc"][0] == field


def test_payload_defaults() -> None:
    payload = HttpCallPayload.model_validate({"url": "https://example.com/hook"})
    assert (payload.method, payload.headers, payload.body, payload.timeout) == ("GET", {}, None, 10)

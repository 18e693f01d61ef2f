"""`http_call`: one HTTP request, so a job can call a webhook or an API with taskapp's retries behind it.

2xx succeeds; 5xx, connection errors and timeouts are worth another attempt; any other status is the
caller's problem and fails the job at once. Request headers and bodies often carry credentials, so neither
ever reaches a log line or an error message: those name the method, host (and port), path and status only.
"""

from __future__ import annotations

import codecs
import time
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, StringConstraints

from taskapp.errors import PermanentError
from taskapp.registry import JobContext, handler

#: The response body kept in the job's result; the rest is never read, so a large download costs nothing.
MAX_BODY_BYTES = 64 * 1024

#: RFC 9110 token characters; anything else would be rejected by the HTTP library after the job was accepted.
HeaderName = Annotated[str, StringConstraints(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
#: Printable ASCII only: no CR/LF (header injection) and nothing the HTTP library cannot encode.
HeaderValue = Annotated[str, StringConstraints(pattern=r"^[\t\x20-\x7e]*$")]


class HttpCallPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: HttpUrl
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    headers: dict[HeaderName, HeaderValue] = Field(default_factory=dict)
    #: A string is sent as is; an object or array is sent as JSON.
    body: str | dict[str, Any] | list[Any] | None = None
    #: Seconds: bounds each network wait, and the body must have arrived this long after the start.
    timeout: float = Field(default=10, gt=0, le=300)


class HttpCallRetryable(Exception):
    """Raised on a 5xx answer, a connection error or a timeout: the same request may succeed later."""


@handler("http_call", schema=HttpCallPayload, retry_on=(HttpCallRetryable,))
def http_call(payload: HttpCallPayload, job: JobContext) -> dict[str, Any]:
    deadline = time.monotonic() + payload.timeout
    url = httpx.URL(str(payload.url))
    # httpx's netloc has the port only when it is not the scheme's default, and never the credentials.
    target = f"{payload.method} {url.netloc.decode('ascii')}{payload.url.path or '/'}"
    # Credentials in the URL become a header, so the URL httpx logs at INFO no longer carries them;
    # an explicit Authorization header wins over them.
    explicit = any(name.lower() == "authorization" for name in payload.headers)
    auth = httpx.BasicAuth(url.username, url.password) if url.userinfo and not explicit else None
    url = url.copy_with(userinfo=b"")
    content: dict[str, Any] = {}
    if isinstance(payload.body, str):
        content["content"] = payload.body.encode()
    elif payload.body is not None:
        content["json"] = payload.body
    try:
        with (
            httpx.Client(timeout=payload.timeout, follow_redirects=False) as client,
            client.stream(payload.method, url, headers=payload.headers, auth=auth, **content) as response,
        ):
            status = response.status_code
            job.logger.info("%s answered %d", target, status)
            if 500 <= status < 600:
                raise HttpCallRetryable(f"{target}: server error {status}")
            if not 200 <= status < 300:
                raise PermanentError(f"{target}: answered {status}, which retrying cannot change")
            body = _read_text(response, deadline, target)
            return {"status": status, "headers": dict(response.headers), "body": body}
    except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        job.logger.info("%s failed: %s", target, type(exc).__name__)
        raise HttpCallRetryable(f"{target}: {type(exc).__name__}: {exc}") from exc
    except httpx.LocalProtocolError as exc:
        # Its message can quote the offending request header, secret or not: keep it out of the traceback too.
        raise PermanentError(f"{target}: the request could not be sent ({type(exc).__name__})") from None
    except httpx.HTTPError as exc:
        raise PermanentError(f"{target}: {type(exc).__name__}: {exc}") from exc


def _read_text(response: httpx.Response, deadline: float, target: str) -> str:
    """The body as text, cut at MAX_BODY_BYTES without splitting a character.

    The deadline is checked between chunks because the client's own timeout bounds each read, not the total:
    a server trickling a byte at a time would otherwise hold the worker for hours.
    """
    decoder = codecs.getincrementaldecoder(response.encoding or "utf-8")(errors="replace")
    data = bytearray()
    for chunk in response.iter_bytes():
        if time.monotonic() > deadline:
            raise HttpCallRetryable(f"{target}: body not read within the timeout")
        data += chunk
        if len(data) >= MAX_BODY_BYTES:
            return decoder.decode(bytes(data[:MAX_BODY_BYTES]))
    return decoder.decode(bytes(data), final=True)

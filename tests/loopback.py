"""Real servers on loopback for the handlers that call out: a scripted HTTP server and an SMTP mailbox."""

from __future__ import annotations

import socket
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: Hold the response until the test ends, to make the client time out.
    stall: bool = False
    #: Send the body in ten pieces this many seconds apart.
    gap: float = 0.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class ScriptedServer:
    """Answers each request with the next scripted reply (418 once the script runs out) and records it."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[Request] = []
        #: Set at teardown, so stalled or trickling replies end at once.
        self.released = threading.Event()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def take(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            return self.replies.popleft() if self.replies else Reply(418, b"script exhausted")


def _handler_class(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            headers = {name.lower(): value for name, value in self.headers.items()}
            reply = server.take(Request(self.command, self.path, headers, body))
            self.close_connection = True
            if reply.stall:
                server.released.wait(30)
                return
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if reply.gap:
                    step = max(1, len(reply.body) // 10)
                    for start in range(0, len(reply.body), step):
                        self.wfile.write(reply.body[start : start + step])
                        if server.released.wait(reply.gap):
                            return
                else:
                    self.wfile.write(reply.body)
            except OSError:
                pass  # The client gave up (timeout, truncation): nothing left to answer.

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def scripted_http_server() -> Iterator[ScriptedServer]:
    """A running ScriptedServer, shut down (stalled replies released) on exit."""
    scripted = ScriptedServer()
    scripted.thread.start()
    try:
        yield scripted
    finally:
        scripted.released.set()
        scripted.httpd.shutdown()
        scripted.httpd.server_close()
        scripted.thread.join(timeout=10)


class Mailbox:
    """Accepts everything, except the recipients, senders or messages told to answer otherwise."""

    def __init__(self) -> None:
        self.messages: list[Envelope] = []
        #: Recipient address -> SMTP reply for RCPT TO; the rest are accepted.
        self.rcpt_replies: dict[str, str] = {}
        self.mail_reply: str | None = None
        self.data_reply: str | None = None

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        self.messages.append(envelope)
        return "250 Message accepted"


class LoopbackController(Controller):
    """aiosmtpd on a port the OS picks, bound before the server starts so nothing else can take it."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        super().__init__(handler, hostname="127.0.0.1", port=self._sock.getsockname()[1], **kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)


@contextmanager
def smtp_mailbox(**smtp_options: Any) -> Iterator[tuple[Mailbox, int]]:
    """A running SMTP server (keyword arguments go to aiosmtpd) and its port."""
    mailbox = Mailbox()
    controller = LoopbackController(mailbox, **smtp_options)
    controller.start()
    try:
        yield mailbox, controller.port
    finally:
        controller.stop()

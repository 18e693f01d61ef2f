"""The gateway's HTTP side for operators, on TASKAPP_METRICS_ADDR: `/metrics` (Prometheus), `/healthz` (the
process answers) and `/readyz` (PostgreSQL and Redis answer too; 503 naming what does not).

A plain WSGI app on the standard library's threaded server: probes and scrapes are a few requests a minute.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client import Counter, Histogram, make_wsgi_app

from taskapp.config import split_address
from taskapp.errors import StoreUnavailable
from taskapp.redis_target import redis_client
from taskapp.store.port import JobStore

log = logging.getLogger(__name__)

RPCS = Counter("taskapp_gateway_rpcs", "RPCs handled, by method and status code", ["method", "code"])
RPC_SECONDS = Histogram("taskapp_gateway_rpc_seconds", "Time to handle an RPC", ["method"])

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class Readiness:
    """Whether the gateway's dependencies answer, each within a second or two."""

    def __init__(self, store: JobStore, redis_url: str) -> None:
        self.store = store
        self.redis = redis_client(redis_url, socket_connect_timeout=1, socket_timeout=1)

    def check(self) -> dict[str, str]:
        status = {"database": "ok", "redis": "ok"}
        try:
            self.store.ping()
        except StoreUnavailable as exc:
            status["database"] = str(exc)
        try:
            self.redis.ping()
        except (redis.RedisError, OSError) as exc:
            status["redis"] = f"unreachable: {exc}"
        return status


def ops_app(readiness: Readiness) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    metrics = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            return _json(start_response, "200 OK", {"status": "alive"})
        if path == "/readyz":
            checks = readiness.check()
            ready = all(value == "ok" for value in checks.values())
            return _json(start_response, "200 OK" if ready else "503 Service Unavailable", checks)
        return _json(start_response, "404 Not Found", {"error": "try /metrics, /healthz or /readyz"})

    return app


def _json(start_response: StartResponse, status: str, body: dict[str, str]) -> list[bytes]:
    start_response(status, [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # Scrapes and probes every few seconds would drown the gateway's log.


def serve_ops_http(address: str, readiness: Readiness) -> WSGIServer:
    host, port = split_address(address)
    try:
        server = make_server(
            host,
            int(port),
            ops_app(readiness),
            server_class=_ThreadingServer,
            handler_class=_QuietHandler,
        )
    except (OSError, ValueError) as exc:
        raise SystemExit(f"taskapp gateway: cannot serve metrics on {address}: {exc}") from None
    threading.Thread(target=server.serve_forever, name="ops-http", daemon=True).start()
    log.info("metrics and health on http://%s/", address)
    return server

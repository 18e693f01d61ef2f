"""The gateway process: JobService, health and reflection on one `grpc.aio` server."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import REGISTRY

from grpc_gateway.auth import TokenAuth
from grpc_gateway.batching import SubmitBatcher
from grpc_gateway.changes import ChangeListener
from grpc_gateway.console.pages import console
from grpc_gateway.decoding import RequestDecoding
from grpc_gateway.http_api import http_app, http_server
from grpc_gateway.ops_http import Readiness, serve_ops_http
from grpc_gateway.servicer import JobServicer
from grpc_gateway.v1 import jobs_pb2, jobs_pb2_grpc
from taskapp.app import app as celery_app
from taskapp.broker_stats import RedisBrokerStats
from taskapp.clock import utcnow
from taskapp.config import Settings, get_settings, is_loopback
from taskapp.errors import TaskappError
from taskapp.gc_pauses import freeze_startup_objects
from taskapp.log_format import setup_process_logging
from taskapp.metrics import QueueCollector, record_changes
from taskapp.notify import ChangePublisher
from taskapp.published_marks import PublishedMarks
from taskapp.publisher import CeleryPublisher
from taskapp.registry import load_handlers
from taskapp.schedules import ScheduleService
from taskapp.service import JobService
from taskapp.store.engine import open_store

log = logging.getLogger("grpc_gateway")

SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
#: Seconds in-flight RPCs get to finish on SIGTERM.
SHUTDOWN_GRACE = 10.0
#: Seconds between checks of PostgreSQL and Redis for the gRPC health status.
HEALTH_CHECK_SECONDS = 2.0
#: Largest request or reply: a SubmitJobs of 1,000 jobs fits; a bigger one is RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Once in-flight calls are done, new calls are refused with UNAVAILABLE until none has come for this many
#: seconds (at most REFUSE_AT_MOST), then the listener closes.
REFUSE_UNTIL_QUIET_FOR = 0.5
REFUSE_AT_MOST = 5.0


def token_auth(settings: Settings) -> TokenAuth | None:
    """Token auth when tokens are set. Without any token, the gateway serves this machine only, and says so."""
    tokens = settings.accepted_tokens()
    if tokens:
        return TokenAuth(tokens)
    for address in (settings.grpc_addr, settings.http_addr):
        if not is_loopback(address):
            raise SystemExit(
                f"taskapp gateway: refusing to listen on {address} without TASKAPP_AUTH_TOKENS: "
                "anyone who can reach it could run jobs. Set TASKAPP_AUTH_TOKENS (or TASKAPP_AUTH_TOKENS_FILE), "
                "or listen on 127.0.0.1."
            )
    log.warning(
        "no TASKAPP_AUTH_TOKENS set: the gateway accepts calls without a token, from this machine only"
    )
    return None


def interceptors_for(auth: TokenAuth | None) -> list[grpc.aio.ServerInterceptor]:
    """Requests that cannot be parsed are refused clearly; then the token is checked."""
    return [RequestDecoding()] if auth is None else [RequestDecoding(), auth]


def tls_for_http(settings: Settings) -> dict[str, Any]:
    """Uvicorn's TLS settings from the gateway's (`listen` checks they are whole)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return {}
    tls: dict[str, Any] = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    if settings.tls_client_ca is not None:
        tls.update(ssl_ca_certs=str(settings.tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return tls


def listen(server: grpc.aio.Server, settings: Settings) -> None:
    """TLS when a certificate and key are given (client certificates required with a client CA)."""
    try:
        if settings.tls_cert is None and settings.tls_key is None:
            server.add_insecure_port(settings.grpc_addr)
            return
        if settings.tls_cert is None or settings.tls_key is None:
            raise SystemExit("taskapp gateway: TLS needs both TASKAPP_TLS_CERT and TASKAPP_TLS_KEY")
        client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
        credentials = grpc.ssl_server_credentials(
            [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )
        server.add_secure_port(settings.grpc_addr, credentials)
    except (RuntimeError, OSError) as exc:
        raise SystemExit(f"taskapp gateway: cannot listen on {settings.grpc_addr}: {exc}") from None


async def serve(settings: Settings) -> None:
    auth = token_auth(settings)
    store = open_store(
        settings.database_url, change_hooks=[ChangePublisher(settings.redis_url), record_changes]
    )
    broker_stats = RedisBrokerStats(celery_app)
    published_marks = PublishedMarks(store, utcnow)
    service = JobService(
        store=store,
        publisher=CeleryPublisher(celery_app),
        registry=load_handlers(settings.handler_modules),
        broker_stats=broker_stats,
        published_marks=published_marks,
    )
    REGISTRY.register(QueueCollector(broker_stats, store))
    readiness = Readiness(store, settings.redis_url)
    ops_http = serve_ops_http(settings.metrics_addr, readiness)
    server = grpc.aio.server(
        interceptors=interceptors_for(auth),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # taskapp's clients ping every 2 s to notice a gateway that went silent (grpc_gateway.client):
            # allowed, idle or not, where gRPC's default would close their connection for it.
            ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )
    changes = ChangeListener(settings.redis_url)
    listening = asyncio.create_task(changes.run())
    batcher = SubmitBatcher(service.submit_validated)
    batching = asyncio.create_task(batcher.run())
    servicer = JobServicer(
        service, changes, batcher, ScheduleService(store, service.submit, service.validate)
    )
    jobs_pb2_grpc.add_JobServiceServicer_to_server(servicer, server)

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    listen(server, settings)
    await server.start()
    app = http_app(servicer, auth)
    console(app, servicer, auth)
    http = http_server(
        app,
        settings.http_addr,
        max_bytes=MAX_MESSAGE_BYTES,
        max_calls=settings.max_concurrent_rpcs,
        tls=tls_for_http(settings),
    )
    serving_http = asyncio.create_task(http.serve())
    while not http.started:  # listening before the gateway says it is (uvicorn exits if it cannot)
        if serving_http.done():
            serving_http.result()
        await asyncio.sleep(0.01)
    freeze_startup_objects("gateway")
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    watching_health = asyncio.create_task(report_health(health_servicer, readiness))
    log.info(
        "taskapp gateway listening on %s (gRPC) and %s (HTTP)%s",
        settings.grpc_addr,
        settings.http_addr,
        " with TLS" if settings.tls_cert else "",
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("taskapp gateway stopping: finishing in-flight calls, refusing new ones")
    await health_servicer.enter_graceful_shutdown()
    await servicer.gate.close(SHUTDOWN_GRACE)
    watching_health.cancel()
    await servicer.gate.quiet(REFUSE_UNTIL_QUIET_FOR, REFUSE_AT_MOST)
    await server.stop(None)
    http.should_exit = True
    await serving_http
    ops_http.shutdown()
    batching.cancel()
    listening.cancel()
    await changes.close()
    await asyncio.to_thread(published_marks.close)


async def report_health(health_servicer: health.aio.HealthServicer, readiness: Readiness) -> None:
    """Keep gRPC health in step with /readyz: NOT_SERVING while PostgreSQL or Redis does not answer."""
    serving = True
    while True:
        await asyncio.sleep(HEALTH_CHECK_SECONDS)
        checks = await asyncio.to_thread(readiness.check)
        ready = all(value == "ok" for value in checks.values())
        if ready != serving:
            log.warning("gateway %s: %s", "ready again" if ready else "not ready", checks)
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ready
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", SERVICE_NAME):
                await health_servicer.set(name, status)
            serving = ready


def main() -> None:
    settings = get_settings()
    setup_process_logging(settings.log_format)
    try:
        # libuv's event loop: the gateway is one process bound by its CPU, and uvloop takes ~10 % less of it per
        # SubmitJob than asyncio's own loop (decision 0006).
        uvloop.run(serve(settings))
    except TaskappError as exc:
        sys.exit(f"taskapp gateway: {exc}")

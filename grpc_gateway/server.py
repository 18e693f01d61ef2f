"""The gateway process: JobService, health and reflection on one `grpc.aio` server."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from grpc_gateway.changes import ChangeListener
from grpc_gateway.servicer import JobServicer
from grpc_gateway.v1 import jobs_pb2, jobs_pb2_grpc
from taskapp.app import app as celery_app
from taskapp.broker_stats import RedisBrokerStats
from taskapp.config import Settings
from taskapp.errors import TaskappError
from taskapp.notify import ChangePublisher
from taskapp.publisher import CeleryPublisher
from taskapp.registry import load_handlers
from taskapp.service import JobService
from taskapp.store import SqlJobStore

log = logging.getLogger("grpc_gateway")

SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
#: Seconds in-flight RPCs get to finish on SIGTERM.
SHUTDOWN_GRACE = 10.0
#: Seconds new calls are refused with UNAVAILABLE, once in-flight calls are done, before the listener closes.
REFUSE_BEFORE_STOP = 0.5


def build_service(settings: Settings) -> JobService:
    return JobService(
        store=SqlJobStore.from_url(settings.database_url, on_change=ChangePublisher(settings.redis_url)),
        publisher=CeleryPublisher(celery_app),
        registry=load_handlers(settings.handler_modules),
        broker_stats=RedisBrokerStats(celery_app),
    )


async def serve(settings: Settings) -> None:
    service = build_service(settings)
    server = grpc.aio.server()
    changes = ChangeListener(settings.redis_url)
    listening = asyncio.create_task(changes.run())
    servicer = JobServicer(service, changes)
    jobs_pb2_grpc.add_JobServiceServicer_to_server(servicer, server)

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    try:
        server.add_insecure_port(settings.grpc_addr)
    except RuntimeError as exc:
        raise SystemExit(f"taskapp gateway: cannot listen on {settings.grpc_addr}: {exc}") from None
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("taskapp gateway listening on %s", settings.grpc_addr)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("taskapp gateway stopping: finishing in-flight calls, refusing new ones")
    await health_servicer.enter_graceful_shutdown()
    await servicer.gate.close(SHUTDOWN_GRACE)
    # Calls the server has accepted but not started when it stops are cancelled (CANCELLED, which clients do
    # not retry): keep answering a clear UNAVAILABLE a little longer, so callers move on first.
    await asyncio.sleep(REFUSE_BEFORE_STOP)
    await server.stop(None)
    listening.cancel()
    await changes.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(Settings()))
    except TaskappError as exc:
        sys.exit(f"taskapp gateway: {exc}")

"""The worker's `/metrics` on TASKAPP_WORKER_METRICS_ADDR: job metrics from all its processes, summed.

Jobs run in prefork pool processes, and a counter in each would disagree with the others. So the worker runs
prometheus_client in multiprocess mode: before the pool starts, the main process gives every process of this
worker one fresh directory of value files, and its HTTP server sums them at each scrape. Counts of a pool
process that died stay in its files, so restarts of pool processes lose nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

from celery.signals import worker_init, worker_shutdown
from prometheus_client import CollectorRegistry, multiprocess, start_http_server, values

from taskapp.config import get_settings, split_address

log = logging.getLogger(__name__)

#: Where prometheus_client's multiprocess mode keeps its value files (its own variable).
MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: Our directories' names start so: at shutdown the worker removes its own, never one it was given.
DIRECTORY_PREFIX = "taskapp-worker-metrics-"


def serve_metrics(**_: Any) -> None:
    address = get_settings().worker_metrics_addr
    if not address:
        return
    directory = tempfile.mkdtemp(prefix=DIRECTORY_PREFIX)
    os.environ[MULTIPROC_DIR_VARIABLE] = directory
    # prometheus_client picks its value class when it is imported, which was before this: pick again, now
    # that the directory is set, before any job metric holds a value.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    host, port = split_address(address)
    try:
        start_http_server(int(port), host, registry)
    except (OSError, ValueError) as exc:
        # Metrics are for watching jobs, not for running them: the worker goes on without them.
        log.error("worker metrics not served on %s (TASKAPP_WORKER_METRICS_ADDR): %s", address, exc)
        return
    log.info("worker metrics on http://%s/metrics", address)


def remove_value_files(**_: Any) -> None:
    directory = os.environ.get(MULTIPROC_DIR_VARIABLE, "")
    if os.path.basename(directory).startswith(DIRECTORY_PREFIX):
        shutil.rmtree(directory, ignore_errors=True)


worker_init.connect(serve_metrics)
worker_shutdown.connect(remove_value_files)

"""A worker's SIGTERM: running jobs may finish, for at most `TASKAPP_WORKER_SHUTDOWN_TIMEOUT` seconds.

Celery's warm shutdown (SIGTERM) waits for running tasks without limit, and its soft shutdown
(`worker_soft_shutdown_timeout`) always sleeps the whole timeout, even when the tasks finish at once. So:

- pool processes ignore SIGTERM: process managers (honcho, systemd) signal the whole process group, and a pool
  process that died of it would cut its job short. Only the worker's main process acts on SIGTERM;
- on the warm shutdown signal a timer starts; if runs are still going when it fires, their pool processes are
  killed, `JobRequest` returns their jobs to QUEUED without counting the attempt, and Celery gives their
  messages back to the queue (`task_reject_on_worker_lost`) for another worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Any

from celery.signals import worker_process_init, worker_shutting_down
from celery.worker import state

from taskapp.config import get_settings

log = logging.getLogger(__name__)

#: Set once the shutdown bound has passed and this worker stops the runs still going.
stopping_runs = threading.Event()


def ignore_sigterm(**_: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def bound_warm_shutdown(how: str = "", **_: Any) -> None:
    if how != "Warm":
        return
    timeout = get_settings().worker_shutdown_timeout
    log.info("warm shutdown: running jobs have %.0f s to finish, then go back to the queue", timeout)
    timer = threading.Timer(timeout, stop_runs)
    timer.daemon = True
    timer.start()


def stop_runs() -> None:
    requests = [request for request in list(state.active_requests) if request.worker_pid]
    if not requests:
        return
    stopping_runs.set()
    log.warning("shutdown bound reached: returning %d running job(s) to the queue", len(requests))
    for request in requests:
        with contextlib.suppress(ProcessLookupError):  # It finished meanwhile.
            os.kill(request.worker_pid, signal.SIGKILL)


worker_process_init.connect(ignore_sigterm)
worker_shutting_down.connect(bound_warm_shutdown)

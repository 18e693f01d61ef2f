"""Long-lived processes take what they built at start-up out of the garbage collector's walks.

A full (generation 2) collection walks every object the collector tracks, and holds the GIL while it does: the
gateway has about 160,000 once it serves (the modules of gRPC, SQLAlchemy, pydantic, Celery, uvicorn), and a
full collection of them took 110-117 ms on the 2-core benchmark machine, every call in flight waiting; a worker's
main process and each pool process have about 150,000 (collections of 40-47 ms: no message taken, or a run
stalled). Measured with `gc.callbacks`. Those objects live as long as the process, so walking them finds
nothing to free. `gc.freeze()` moves them to a permanent generation once the process is up; later collections
walk only what came after. The gateway calls `freeze_startup_objects` when it serves; a worker's main process
when it is ready, and each pool process once started (they were forked before the main process froze).
"""

from __future__ import annotations

import gc
import logging
from typing import Any

from celery.signals import worker_process_init, worker_ready

log = logging.getLogger(__name__)


def freeze_startup_objects(process: str) -> None:
    """Collect what start-up left for garbage, then freeze the rest, and log how many objects that was."""
    gc.collect()
    gc.freeze()
    log.info(
        "%s: %d objects from start-up frozen out of the garbage collector's walks",
        process,
        gc.get_freeze_count(),
    )


def freeze_in_main_process(**_: Any) -> None:
    freeze_startup_objects("worker main process")


def freeze_in_pool_process(**_: Any) -> None:
    freeze_startup_objects("worker pool process")


worker_ready.connect(freeze_in_main_process)
worker_process_init.connect(freeze_in_pool_process)

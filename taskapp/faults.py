"""Fault points: named moments where a test can make the process die, to prove that nothing is lost.

Armed only by the environment (`TASKAPP_FAULT=<name>`), which no deployment sets; disarmed it costs one
dictionary lookup. The crash is SIGKILL, as a power cut or the OOM killer would deliver it.
"""

from __future__ import annotations

import os
import signal

#: The gateway has committed a new job in SQL and not yet published its message.
AFTER_COMMIT_BEFORE_PUBLISH = "after-commit-before-publish"
#: A worker's main process has taken a message from Redis and not yet handed it to a pool process.
AFTER_DELIVERY_BEFORE_RUN = "after-delivery-before-run"


def fault_point(name: str) -> None:
    if os.environ.get("TASKAPP_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)

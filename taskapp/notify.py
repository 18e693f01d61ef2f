"""Job change notifications over Redis pub/sub: SQL keeps the events, this only says "look again".

Every writer (gateway, worker, scheduler) publishes the ids of the jobs a commit gave events to, several to a
message (separated by spaces: job ids have none); the gateway's WatchJob streams wake on them and read
`job_events` from SQL. A lost notification costs latency, never an event: watchers also look again every second
on their own.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Sequence

import redis

from taskapp.jobs import JobChange
from taskapp.redis_target import redis_client

log = logging.getLogger(__name__)

#: How long a change waits for others to go out with it: a watcher hears of it that much later, at most.
LINGER_SECONDS = 0.01


def changes_channel(client: redis.Redis) -> str:
    """Pub/sub ignores database numbers, so the channel names the database: deployments sharing a server
    (and test runs) do not wake each other's watchers."""
    db = client.connection_pool.connection_kwargs.get("db", 0)
    return f"taskapp:job-changes:{db}"


class ChangePublisher:
    """A change hook of the store: publishes each changed job's id, best effort, from a thread of its own, so
    a job's transition never waits on Redis. Ids that come within `LINGER_SECONDS` of each other, or while a
    publish is under way, go out together, each once."""

    def __init__(self, redis_url: str) -> None:
        self._client = redis_client(redis_url, socket_connect_timeout=1, socket_timeout=1)
        self.channel = changes_channel(self._client)
        self._pending: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._sender_pid = 0

    def __call__(self, changes: Sequence[JobChange]) -> None:
        if self._sender_pid != os.getpid():
            # First use in this process (a worker's pool processes are forked, and threads do not survive it).
            self._sender_pid = os.getpid()
            self._sender = threading.Thread(target=self._send_forever, name="job-changes", daemon=True)
            self._sender.start()
        for change in changes:
            self._pending.put(change.job_id)

    def _send_forever(self) -> None:
        while True:
            job_ids = dict.fromkeys([self._pending.get()])
            # A moment for the job's next change (a quick job's RUNNING and SUCCEEDED) to join this one.
            time.sleep(LINGER_SECONDS)
            while not self._pending.empty():
                job_ids[self._pending.get()] = None
            self.publish(list(job_ids))

    def publish(self, job_ids: list[str]) -> None:
        """One message for them all: per job, a message cost Redis and every gateway as much as the rest of
        the job's notification path."""
        try:
            self._client.publish(self.channel, " ".join(job_ids))
        except redis.RedisError as exc:
            log.debug("could not announce changes of %d job(s): %s", len(job_ids), exc)

"""Job change notifications over Redis pub/sub: SQL keeps the events, this only says "look again".

Every writer (gateway, worker, scheduler) publishes the ids of the jobs a commit gave events to; the gateway's
WatchJob streams wake on them and read `job_events` from SQL. A lost notification costs latency, never an
event: watchers also look again every second on their own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis

from taskapp.jobs import JobChange

log = logging.getLogger(__name__)


def changes_channel(client: redis.Redis) -> str:
    """Pub/sub ignores database numbers, so the channel names the database: deployments sharing a server
    (and test runs) do not wake each other's watchers."""
    db = client.connection_pool.connection_kwargs.get("db", 0)
    return f"taskapp:job-changes:{db}"


class ChangePublisher:
    """A change hook of the store: publishes each changed job's id, best effort."""

    def __init__(self, redis_url: str) -> None:
        self._client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
        self.channel = changes_channel(self._client)

    def __call__(self, changes: Sequence[JobChange]) -> None:
        job_ids = dict.fromkeys(change.job_id for change in changes)
        try:
            pipeline = self._client.pipeline(transaction=False)
            for job_id in job_ids:
                pipeline.publish(self.channel, job_id)
            pipeline.execute()
        except redis.RedisError as exc:
            log.debug("could not announce changes of %d job(s): %s", len(job_ids), exc)

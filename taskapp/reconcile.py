"""`taskapp reconcile`: after the broker lost its data, send again every message SQL says should be there.

Redis keeps its queues in memory; a restart without persistence, a failover or a FLUSHDB loses them while SQL
still says QUEUED. This reads which jobs the broker holds a message for (every priority queue, with the Redis
transport's priority sub-lists, and the messages workers hold unacknowledged) and publishes the jobs that need
one and have none: QUEUED, RETRYING (keeping the rest of its back-off), and RUNNING whose lease ended with no
worker left to finish it. A message that was in flight while this ran may end up doubled, which is harmless:
the claim lets only one delivery run the job.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import redis

from taskapp.clock import utcnow
from taskapp.publisher import Publisher
from taskapp.routing import PRIORITY_QUEUES, broker_keys
from taskapp.scheduler import publish_owed
from taskapp.store.port import JobStore

log = logging.getLogger(__name__)

#: Where kombu's Redis transport keeps a delivered message until its worker acknowledges it.
UNACKED_KEY = "unacked"
#: Messages read from a broker list per command.
MESSAGES_PER_READ = 1_000
#: Jobs read from SQL per query.
JOBS_PER_PAGE = 1_000


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    in_broker: int
    checked: int
    republished: int


def _job_id(message: object) -> str | None:
    if isinstance(message, dict):
        job_id = message.get("headers", {}).get("id")
        return job_id if isinstance(job_id, str) else None
    return None


def job_ids_in_broker(client: redis.Redis) -> set[str]:
    """Ids of the jobs with a message in a priority queue or held unacknowledged by a worker."""
    found: set[str] = set()
    keys = [key for queue in PRIORITY_QUEUES for key in broker_keys(queue)]
    for key in keys:
        for start in range(0, int(client.llen(key)), MESSAGES_PER_READ):
            for raw in client.lrange(key, start, start + MESSAGES_PER_READ - 1):
                if job_id := _job_id(json.loads(raw)):
                    found.add(job_id)
    for _, raw in client.hscan_iter(UNACKED_KEY, count=MESSAGES_PER_READ):
        # Each entry is [message, exchange, routing_key].
        entry = json.loads(raw)
        if isinstance(entry, list) and entry and (job_id := _job_id(entry[0])):
            found.add(job_id)
    return found


def reconcile(store: JobStore, publisher: Publisher, client: redis.Redis) -> ReconcileReport:
    in_broker = job_ids_in_broker(client)
    checked = republished = 0
    after_seq = 0
    while jobs := store.awaiting_run(utcnow(), after_seq, JOBS_PER_PAGE):
        after_seq = jobs[-1].seq
        checked += len(jobs)
        missing = [job for job in jobs if job.job_id not in in_broker]
        publish_owed(store, publisher, missing)
        republished += len(missing)
    log.info("reconcile: %d job(s) need a message, %d had none and were published", checked, republished)
    return ReconcileReport(in_broker=len(in_broker), checked=checked, republished=republished)

"""Flow control: how many jobs run at once, per concurrency key and per job type, across every worker.

A job may carry a concurrency key and a limit (SubmitJob's, or its type's default from the payload fields the
handler names); an operator may limit, rate or pause a type, a queue or a key (`FlowControl`, in SQL). A job
under a limit is claimed only while its key and type run fewer jobs than their limits, counted in SQL under a lock (`JobStore.claim`), never
by a read-then-write race between workers. Otherwise the delivery parks it in its type's line in SQL, without
a message in the broker, so it is not delivered again and again; its message goes out again when a slot frees:
the worker whose run under a limit ends lets the next jobs out (`let_out_after`), and the scheduler's pass
does it for every line too (`let_out_everywhere`), for a worker that died first. Within a priority, the keys of
a type take turns (start-time fair queueing on `fair_rank`), so a key with 100,000 waiting jobs does not starve
one with 10. Jobs of types and keys without limits never touch any of this: their claim is the one statement
it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from taskapp.clock import utcnow
from taskapp.errors import BrokerUnavailable, StoreUnavailable
from taskapp.jobs import Job, SentMessage
from taskapp.publisher import Publisher
from taskapp.store.port import JobStore

log = logging.getLogger(__name__)

#: Jobs one call lets out of a line at most: a pass stays short however long the line.
LET_OUT_MOST = 100


def let_out(
    store: JobStore, publisher: Publisher, type: str, clock: Callable[[], datetime] = utcnow
) -> list[Job]:
    """Publish the jobs of `type`'s line that its limits have room for, ahead of what waits in their queues:
    they had their place in line already."""
    now = clock()
    jobs = store.let_out(type, now, LET_OUT_MOST)
    if jobs:
        # One given a start by its type's rate is sent to start then, not before.
        for job in (job for job in jobs if job.scheduled_at > now):
            publisher.publish(job, countdown=(job.scheduled_at - now).total_seconds())
        publisher.publish_many([job for job in jobs if job.scheduled_at <= now], at_front=True)
        store.mark_published([SentMessage.of(job) for job in jobs], clock())
    return jobs


def let_out_after(store: JobStore, publisher: Publisher, run: Job) -> None:
    """After a run under a limit ended: its slot is free for the next job in its type's line. The run's outcome
    is written already; if the database or broker is away, the scheduler's pass lets the next one out."""
    if not run.flow_limited:
        return
    try:
        let_out(store, publisher, run.type)
    except (StoreUnavailable, BrokerUnavailable) as exc:
        log.warning("the line of %s waits for the scheduler: %s", run.type, exc)


def let_out_everywhere(store: JobStore, publisher: Publisher, clock: Callable[[], datetime] = utcnow) -> int:
    """Every line's jobs that have room now: those whose slot's worker died before letting them out, or whose
    limit was raised."""
    return sum(len(let_out(store, publisher, type, clock)) for type in store.types_in_line())

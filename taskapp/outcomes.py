"""Applying `taskapp.policy`'s decision for a failed run: the guarded write in SQL, and the dead-letter message.

Shared by the worker (a run that failed or died) and the scheduler (a run whose lease lapsed), so a lost run
ends the same way whoever notices it first; the guards make the second notice a no-op.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from taskapp import flow, policy
from taskapp.clock import utcnow
from taskapp.jobs import Job, JobState
from taskapp.publisher import Publisher
from taskapp.store.port import JobStore


def end_failed_run(
    store: JobStore,
    publisher: Publisher,
    run: Job,
    failure: policy.Failure,
    error: str,
    *,
    worker: str = "",
    lapsed: bool = False,
    now: datetime | None = None,
) -> policy.Decision | None:
    """Apply the decision for `run` (the job as its claim left it), which ended in `failure`. A retry is
    RETRYING in SQL, its message owed from the end of its back-off (the scheduler publishes it then); a dead
    letter gets its message in the `dead_letter` queue. `lapsed`: the run lost its lease, and is ended only if
    that is still so at `now` (default: the clock's now).

    Returns the decision, or None when the job had already moved on (the write's guard refused it). Raises
    `StoreUnavailable` if the database is away.
    """
    decision = policy.decide(failure, run.attempts, run.max_attempts, random.random())
    now = now or utcnow()
    match decision:
        case policy.Retry(delay):
            retry_at = now + timedelta(seconds=delay)
            moved = store.fail_run(
                run.job_id, run.attempts, JobState.RETRYING, error, now, retry_at=retry_at, lapsed=lapsed
            )
        case policy.Finish(state):
            moved = store.fail_run(run.job_id, run.attempts, state, error, now, lapsed=lapsed)
            if moved and state is JobState.DEAD_LETTER:
                publisher.dead_letter(run, error)
        case policy.Release():
            moved = store.release(run.job_id, worker, now)
        case policy.Nothing():
            moved = True
    if moved:
        flow.let_out_after(store, publisher, run)
    return decision if moved else None

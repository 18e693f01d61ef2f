"""A rate's starts (`FlowControl.rate` starts per `rate_seconds`): when each start may happen.

Starts are spaced evenly (`start_spacing`), never in bursts: two starts are never less than a spacing apart, so
in any window of `rate_seconds` at most `rate` start (one more at the edges). A job that may not start yet is given
a later start and waits in SQL for it; the one after is given the start after that (`next_start_at`). A claim
whose start is only a little ahead (`hold`: given starts come a little early or late, with the jitter of timers
and deliveries) takes that start and waits for it in the worker, rather than going round its line again.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from taskapp.jobs import FlowControl

#: How far ahead a start may be for a claim to take it and wait for it in the worker: a share of a spacing,
#: and never more than `HOLD_MOST` (the pool process is held meanwhile).
HOLD_SHARE = 0.5
HOLD_MOST = timedelta(seconds=0.5)


def give_start(control: FlowControl, now: datetime) -> tuple[datetime, FlowControl]:
    """The next start the rate gives from `now` to a job that will wait for it, and the control with it given."""
    spacing = control.start_spacing
    if spacing is None:
        return now, control
    start = earliest_start(control, now, given=False)
    return start, dataclasses.replace(control, next_start_at=start + spacing)


def earliest_start(control: FlowControl, now: datetime, given: bool) -> datetime:
    """The earliest a claim at `now` may start its job: a spacing after the last start taken and, unless the job
    was given its start before (`given`: let out of its line for it), not before the next start to give."""
    spacing = control.start_spacing
    if spacing is None:
        return now
    start = now if given else max(now, control.next_start_at or now)
    if control.last_start_at is not None:
        start = max(start, control.last_start_at + spacing)
    return start


def hold(control: FlowControl) -> timedelta:
    """How far ahead of a claim a start may be for the claim to take it (and its worker to wait for it)."""
    spacing = control.start_spacing
    return timedelta(0) if spacing is None else min(spacing * HOLD_SHARE, HOLD_MOST)


def take_start(control: FlowControl, at: datetime, given: bool) -> FlowControl:
    """The control with a start at `at` taken (by a job given it before, or by one that takes the next)."""
    spacing = control.start_spacing
    if spacing is None:
        return control
    next_start_at = control.next_start_at if given else at + spacing
    return dataclasses.replace(control, last_start_at=at, next_start_at=next_start_at)


@dataclasses.dataclass(frozen=True)
class Start:
    """When a claim's job starts under the rates of its controls, and the controls after."""

    at: datetime
    #: False: the claim takes the start (now, or within `hold`, its worker waiting for it); True: the job waits
    #: in its line for it.
    waits: bool
    controls: list[FlowControl]


def start_under(controls: list[FlowControl], now: datetime, given: bool) -> Start:
    """The start a claim at `now` gets under the rates of `controls` (its job type's, its key's): the earliest
    they all allow, taken if it is near enough for each; else a start given by each, the latest of which it
    waits for."""
    rated = [control for control in controls if control.start_spacing is not None]
    at = max((earliest_start(control, now, given) for control in rated), default=now)
    if at - now <= min((hold(control) for control in rated), default=timedelta(0)):
        return Start(at, False, [take_start(control, at, given) for control in controls])
    gives = [give_start(control, now) for control in controls]
    return Start(max(start for start, _ in gives), True, [control for _, control in gives])

"""A job type's rate (`FlowControl.rate` starts per `rate_seconds`): when each start may happen.

Starts are spaced evenly (`start_spacing`), never in bursts: in any window of `rate_seconds`, at most `rate`
start (one more at the edges). A job that may not start yet is given a later start and waits in SQL for it;
the one after is given the start after that (`next_start_at`). A start given in advance can still come late,
together with others (the workers were busy until then): one that comes less than `GIVEN_GAP` of a spacing
after the last start taken is given a new one, so that late starts are spread again rather than run at once.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from taskapp.jobs import FlowControl

#: How much of a spacing a start given in advance must come after the last start taken: less leaves room for
#: the jitter of timers and deliveries, more would let late starts bunch.
GIVEN_GAP = 0.8


def give_start(control: FlowControl, now: datetime) -> tuple[datetime, FlowControl]:
    """The next start the rate gives from `now`, and the control with it taken."""
    spacing = control.start_spacing
    if spacing is None:
        return now, control
    start = max(now, control.next_start_at or now)
    if control.last_start_at is not None:
        start = max(start, control.last_start_at + spacing)
    return start, dataclasses.replace(control, next_start_at=start + spacing)


def start_now(control: FlowControl, now: datetime, given: bool) -> tuple[datetime, FlowControl]:
    """When a claim at `now` may start its job (now, or a start given for later), and the control after it.
    `given`: the job was let out of its line for a start given before."""
    spacing = control.start_spacing
    if spacing is None:
        return now, control
    if given and (control.last_start_at is None or now >= control.last_start_at + spacing * GIVEN_GAP):
        return now, dataclasses.replace(control, last_start_at=now)
    start, control = give_start(control, now)
    if start > now:
        return start, control
    return now, dataclasses.replace(control, last_start_at=now)

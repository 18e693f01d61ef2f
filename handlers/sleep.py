"""`sleep`: waits `seconds`, standing in for slow work (cancellation, timeouts, shutdown)."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

from taskapp.registry import JobContext, handler


class SleepPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(ge=0, le=86_400)


@handler("sleep", schema=SleepPayload)
def sleep(payload: SleepPayload, job: JobContext) -> dict[str, float]:
    """Reports its progress every tenth of the time (at most once a second), as long work would."""
    started = time.monotonic()
    step = max(payload.seconds / 10, 1.0)
    while (left := payload.seconds - (time.monotonic() - started)) > 0:
        time.sleep(min(step, left))
        done = min(time.monotonic() - started, payload.seconds)
        if done < payload.seconds:
            job.report_progress(int(100 * done / payload.seconds), f"{done:.0f} of {payload.seconds:g} s")
    return {"slept": payload.seconds}

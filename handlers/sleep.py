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
    time.sleep(payload.seconds)
    return {"slept": payload.seconds}

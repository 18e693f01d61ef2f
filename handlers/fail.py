"""`fail`: fails `times` times, then succeeds; `permanent` fails for good. For exercising failure handling."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from taskapp.errors import PermanentError
from taskapp.registry import JobContext, handler


class FailPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    times: int = Field(default=1, ge=0, le=1_000)
    permanent: bool = False


class InducedFailure(Exception):
    """Raised by `fail` on purpose; retryable."""


@handler("fail", schema=FailPayload, retry_on=(InducedFailure,))
def fail(payload: FailPayload, job: JobContext) -> dict[str, int]:
    if payload.permanent:
        raise PermanentError("failed permanently, as asked")
    if job.attempt <= payload.times:
        raise InducedFailure(f"induced failure {job.attempt} of {payload.times}")
    return {"attempts": job.attempt}

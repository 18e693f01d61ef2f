"""`noop`: does nothing. For smoke tests and measuring taskapp's own overhead."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from taskapp.registry import JobContext, handler


class NoopPayload(BaseModel):
    model_config = ConfigDict(extra="allow")


@handler("noop", schema=NoopPayload)
def noop(payload: NoopPayload, job: JobContext) -> None:
    return None

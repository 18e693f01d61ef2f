"""`echo`: returns its payload, so a client sees its data make the full round trip."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from taskapp.registry import JobContext, handler


class EchoPayload(BaseModel):
    """Any JSON object."""

    model_config = ConfigDict(extra="allow")


@handler("echo", schema=EchoPayload)
def echo(payload: EchoPayload, job: JobContext) -> dict[str, Any]:
    return payload.model_dump()

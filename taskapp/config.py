"""One typed settings object, read from the environment once at start-up."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import AliasChoices, BeforeValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}


def _split_modules(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


def parse_duration(value: object) -> object:
    """`7d`, `12h`, `30m`, `45s`, `2w` or plain seconds; anything else is left for pydantic to refuse."""
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class Settings(BaseSettings):
    """Every process (gateway, worker, CLI) builds this from the same variables, so one `.env` configures all."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    #: Job state. A SQLite file for one machine; `postgresql+psycopg://...` for real deployments.
    database_url: str = Field(default="sqlite:///taskapp.db", validation_alias=AliasChoices("DATABASE_URL"))
    #: The Celery broker.
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL"))
    #: Where the gRPC gateway listens.
    grpc_addr: str = Field(default="127.0.0.1:50051", validation_alias=AliasChoices("TASKAPP_GRPC_ADDR"))
    #: Extra modules (comma separated) that register job types.
    handler_modules_raw: str = Field(default="", validation_alias=AliasChoices("TASKAPP_HANDLER_MODULES"))
    #: Worker processes per `celery worker`; Celery's default (CPU count) when unset.
    worker_concurrency: int | None = Field(
        default=None, validation_alias=AliasChoices("TASKAPP_WORKER_CONCURRENCY")
    )
    #: Seconds before Redis hands an unacknowledged message to another worker; above the longest job timeout.
    visibility_timeout: int = Field(
        default=86_400 + 3_600, validation_alias=AliasChoices("TASKAPP_VISIBILITY_TIMEOUT")
    )
    #: Seconds a worker's running jobs get to finish after SIGTERM; the rest go back to the queue.
    worker_shutdown_timeout: float = Field(
        default=25.0, gt=0, validation_alias=AliasChoices("TASKAPP_WORKER_SHUTDOWN_TIMEOUT")
    )
    #: Where the `email` job type sends mail: `smtp://[user:pass@]host:port`, or `smtps://` for implicit TLS.
    smtp_url: str = Field(default="smtp://127.0.0.1:25", validation_alias=AliasChoices("TASKAPP_SMTP_URL"))
    #: How long finished jobs (and their events) are kept before the scheduler deletes them.
    retention: Duration = Field(default=timedelta(days=7), validation_alias=AliasChoices("TASKAPP_RETENTION"))

    @property
    def handler_modules(self) -> tuple[str, ...]:
        return _split_modules(self.handler_modules_raw)

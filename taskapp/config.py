"""One typed settings object, read from the environment once at start-up."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _split_modules(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


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
    #: Where the `email` job type sends mail: `smtp://[user:pass@]host:port`, or `smtps://` for implicit TLS.
    smtp_url: str = Field(default="smtp://127.0.0.1:25", validation_alias=AliasChoices("TASKAPP_SMTP_URL"))

    @property
    def handler_modules(self) -> tuple[str, ...]:
        return _split_modules(self.handler_modules_raw)

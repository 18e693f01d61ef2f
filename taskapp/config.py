"""One typed settings object, read from the environment once at start-up."""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

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


def split_address(address: str) -> tuple[str, str]:
    """`host:port` (an IPv6 host in brackets) as the host, without brackets, and the port."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), port


def is_loopback(address: str) -> bool:
    """Whether `host:port` listens on this machine only."""
    host, _ = split_address(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # A host name: it may resolve to any interface.


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

    #: Bearer tokens the gateway accepts (comma separated), and/or a file of them, one per line (# comments).
    auth_tokens_raw: str = Field(default="", validation_alias=AliasChoices("TASKAPP_AUTH_TOKENS"))
    auth_tokens_file: Path | None = Field(
        default=None, validation_alias=AliasChoices("TASKAPP_AUTH_TOKENS_FILE")
    )
    #: PEM files: the gateway's certificate and key (TLS when both are set), and a CA to require client
    #: certificates signed by it.
    tls_cert: Path | None = Field(default=None, validation_alias=AliasChoices("TASKAPP_TLS_CERT"))
    tls_key: Path | None = Field(default=None, validation_alias=AliasChoices("TASKAPP_TLS_KEY"))
    tls_client_ca: Path | None = Field(default=None, validation_alias=AliasChoices("TASKAPP_TLS_CLIENT_CA"))
    #: `text` for people, `json` for log pipelines (one object per line, with job id, type and attempt).
    log_format: Literal["text", "json"] = Field(
        default="text", validation_alias=AliasChoices("TASKAPP_LOG_FORMAT")
    )
    #: The gateway's HTTP side: /metrics, /healthz, /readyz.
    metrics_addr: str = Field(default="127.0.0.1:9464", validation_alias=AliasChoices("TASKAPP_METRICS_ADDR"))
    #: A worker's /metrics (its job metrics, all its processes summed); empty: not served.
    worker_metrics_addr: str = Field(
        default="127.0.0.1:9465", validation_alias=AliasChoices("TASKAPP_WORKER_METRICS_ADDR")
    )
    #: Where `taskapp exporter` (the Celery exporter) serves /metrics.
    exporter_addr: str = Field(
        default="127.0.0.1:9808", validation_alias=AliasChoices("TASKAPP_EXPORTER_ADDR")
    )
    #: Where Flower serves, and its users (`user:password`, comma separated); required off loopback.
    flower_addr: str = Field(default="127.0.0.1:5555", validation_alias=AliasChoices("TASKAPP_FLOWER_ADDR"))
    flower_auth: str = Field(default="", validation_alias=AliasChoices("TASKAPP_FLOWER_AUTH"))
    #: Flower's saved state (tasks and workers it has seen), kept across its restarts.
    flower_db: Path = Field(default=Path("flower.db"), validation_alias=AliasChoices("TASKAPP_FLOWER_DB"))
    #: Calls the gateway handles at once (WatchJob streams included); more are answered RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = Field(
        default=1_000, gt=0, validation_alias=AliasChoices("TASKAPP_MAX_CONCURRENT_RPCS")
    )

    @property
    def handler_modules(self) -> tuple[str, ...]:
        return _split_modules(self.handler_modules_raw)

    @property
    def auth_tokens(self) -> list[str]:
        """Every configured token (the gateway reads them once, at start)."""
        tokens = [token.strip() for token in self.auth_tokens_raw.split(",")]
        if self.auth_tokens_file is not None:
            lines = self.auth_tokens_file.read_text().splitlines()
            tokens += [line.strip() for line in lines if not line.strip().startswith("#")]
        return [token for token in tokens if token]

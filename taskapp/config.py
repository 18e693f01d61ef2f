"""One typed settings object, read from the environment once per process (`get_settings`)."""

from __future__ import annotations

import functools
import ipaddress
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}


def parse_duration(value: object) -> object:
    """`7d`, `12h`, `30m`, `45s`, `2w` or plain seconds; anything else is left for pydantic to refuse."""
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
    return value


def split_commas(value: object) -> object:
    """`a, b,,c` as `("a", "b", "c")`; anything but a string is left for pydantic to check."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
#: A comma-separated list in the environment (not JSON, which pydantic-settings would expect).
CommaSeparated = Annotated[tuple[str, ...], NoDecode, BeforeValidator(split_commas)]


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
    """Every process (gateway, worker, scheduler, CLI) reads the same variables, so one `.env` configures all.

    Each field is `TASKAPP_<NAME>` in the environment, but the two URLs, which keep their usual names.
    """

    model_config = SettingsConfigDict(env_prefix="TASKAPP_", extra="ignore", frozen=True)

    #: Job state. A SQLite file for one machine; `postgresql+psycopg://...` for real deployments.
    database_url: str = Field(default="sqlite:///taskapp.db", validation_alias="DATABASE_URL")
    #: The Celery broker.
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    #: Where the gateway listens: gRPC, and the same API over HTTP/JSON.
    grpc_addr: str = "127.0.0.1:50051"
    http_addr: str = "127.0.0.1:8080"
    #: Modules that register job types, beside the built-in ones.
    handler_modules: CommaSeparated = ()
    #: Worker processes per `celery worker`; Celery's default (CPU count) when unset.
    worker_concurrency: int | None = None
    #: Seconds a running job's lease lasts. Its worker renews it every sixth of that while the run lives, and
    #: stops a run it could not renew for two thirds of it; past it, the scheduler rescues the job.
    lease_seconds: float = Field(default=30.0, ge=3.0)
    #: Seconds before Redis hands an unacknowledged message to another worker: a backstop only, kept above the
    #: longest job timeout (a lost run is found by its lease, long before).
    visibility_timeout: int = 86_400 + 3_600
    #: Seconds a worker's running jobs get to finish after SIGTERM; the rest go back to the queue.
    worker_shutdown_timeout: float = Field(default=25.0, gt=0)
    #: Where the `email` job type sends mail: `smtp://[user:pass@]host:port`, or `smtps://` for implicit TLS.
    smtp_url: str = "smtp://127.0.0.1:25"
    #: How long finished jobs (and their events) are kept before the scheduler deletes them.
    retention: Duration = timedelta(days=7)

    #: Bearer tokens the gateway accepts, and a file of more, one per line (# comments): `accepted_tokens()`.
    auth_tokens: CommaSeparated = ()
    auth_tokens_file: Path | None = None
    #: PEM files: the gateway's certificate and key (TLS when both are set), and a CA to require client
    #: certificates signed by it.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    #: `text` for people, `json` for log pipelines (one object per line, with job id, type and attempt).
    log_format: Literal["text", "json"] = "text"
    #: The gateway's HTTP side: /metrics, /healthz, /readyz.
    metrics_addr: str = "127.0.0.1:9464"
    #: A worker's /metrics (its job metrics, all its processes summed); empty: not served.
    worker_metrics_addr: str = "127.0.0.1:9465"
    #: Where `taskapp exporter` (the Celery exporter) serves /metrics.
    exporter_addr: str = "127.0.0.1:9808"
    #: Where Flower serves, and its users (`user:password`, comma separated); required off loopback.
    flower_addr: str = "127.0.0.1:5555"
    flower_auth: str = ""
    #: Flower's saved state (tasks and workers it has seen), kept across its restarts.
    flower_db: Path = Path("flower.db")
    #: Calls the gateway handles at once (WatchJob streams included); more are answered RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = Field(default=1_000, gt=0)
    #: A file each process appends its stamps of every job's way to its run to, one JSON line per job and
    #: process (`taskapp.start_latency`); empty: none are written. The benchmark sets it.
    trace_file: str = ""

    @field_validator("redis_url")
    @classmethod
    def _redis_url_is_readable(cls, url: str) -> str:
        """A `sentinel://` URL that names no Sentinel, master or database is refused at start, saying why."""
        from taskapp.redis_target import sentinel_target

        sentinel_target(url)
        return url

    def accepted_tokens(self) -> list[str]:
        """Every configured token: the variable's and the file's (read when called; the gateway does once)."""
        tokens = list(self.auth_tokens)
        if self.auth_tokens_file is not None:
            lines = self.auth_tokens_file.read_text().splitlines()
            tokens += [line.strip() for line in lines if not line.strip().startswith("#")]
        return [token for token in tokens if token]


@functools.cache
def get_settings() -> Settings:
    """This process's settings, read from the environment on first use."""
    return Settings()

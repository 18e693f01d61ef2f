"""Settings: every field from `TASKAPP_<NAME>` (the two URLs under their usual names), read once per process."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from taskapp.config import Settings, get_settings


def test_each_field_is_read_from_its_prefixed_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# ops\nfrom-file\n\n")
    for name, value in {
        "DATABASE_URL": "postgresql://db/jobs",
        "REDIS_URL": "redis://broker:6379/2",
        "TASKAPP_GRPC_ADDR": "0.0.0.0:6000",
        "TASKAPP_HANDLER_MODULES": " myjobs.resize, ,myjobs.mail ",
        "TASKAPP_WORKER_CONCURRENCY": "4",
        "TASKAPP_RETENTION": "12h",
        "TASKAPP_AUTH_TOKENS": "one,two",
        "TASKAPP_AUTH_TOKENS_FILE": str(tokens),
        "TASKAPP_LOG_FORMAT": "json",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert (settings.database_url, settings.redis_url) == ("postgresql://db/jobs", "redis://broker:6379/2")
    assert settings.grpc_addr == "0.0.0.0:6000"
    assert settings.handler_modules == ("myjobs.resize", "myjobs.mail")
    assert settings.worker_concurrency == 4
    assert settings.retention == timedelta(hours=12)
    assert settings.accepted_tokens() == ["one", "two", "from-file"]
    assert settings.log_format == "json"


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        *("DATABASE_URL", "TASKAPP_HANDLER_MODULES", "TASKAPP_AUTH_TOKENS", "TASKAPP_AUTH_TOKENS_FILE"),
        *("TASKAPP_RETENTION", "TASKAPP_WORKER_CONCURRENCY"),
    ):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.database_url == "sqlite:///taskapp.db"
    assert settings.handler_modules == () and settings.accepted_tokens() == []
    assert settings.retention == timedelta(days=7) and settings.worker_concurrency is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("TASKAPP_LOG_FORMAT", "xml"), ("TASKAPP_RETENTION", "soon"), ("TASKAPP_WORKER_SHUTDOWN_TIMEOUT", "0")],
)
def test_a_bad_value_is_refused_naming_its_field(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("TASKAPP_").lower()):
        Settings()


def test_a_process_reads_its_settings_once(monkeypatch: pytest.MonkeyPatch) -> None:
    first = get_settings()
    monkeypatch.setenv("TASKAPP_GRPC_ADDR", "127.0.0.1:7000")
    assert get_settings() is first
    get_settings.cache_clear()
    assert get_settings().grpc_addr == "127.0.0.1:7000"

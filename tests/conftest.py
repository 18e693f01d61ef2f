"""Fixtures shared by every layer: an isolated Redis database and fresh PostgreSQL/SQLite databases per test.

Isolation (so two runs can share a machine): each user of Redis claims a free database number on the shared
server with a lock key; each PostgreSQL test gets its own database cloned from a template migrated once per run.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from hypothesis import settings

from taskapp.migrate import upgrade

# Fuzz tests (tests/acceptance/test_fuzz.py): a quick profile by default, `--hypothesis-profile=thorough` for
# 10,000 cases per test.
settings.register_profile("ci", max_examples=60, deadline=None)
settings.register_profile("thorough", max_examples=10_000, deadline=None)
settings.load_profile("ci")

REDIS_SERVER = os.environ.get("TASKAPP_TEST_REDIS", "redis://127.0.0.1:6379")
PG_ADMIN_DSN = os.environ.get("TASKAPP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
RUN_ID = uuid.uuid4().hex[:10]


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisDatabases:
    """Hands out Redis database numbers 1-15 on the shared server, locked in db 0 against other runs."""

    LOCK = "taskapp:test-lock:{}"

    def __init__(self) -> None:
        self.admin = redis.Redis.from_url(f"{REDIS_SERVER}/0")
        self.token = uuid.uuid4().hex

    def acquire(self) -> str:
        for number in range(1, 16):
            if self.admin.set(self.LOCK.format(number), self.token, nx=True, ex=3600):
                redis.Redis.from_url(f"{REDIS_SERVER}/{number}").flushdb()
                return f"{REDIS_SERVER}/{number}"
        raise RuntimeError("all Redis test databases 1-15 are taken by other runs")

    def release(self, url: str) -> None:
        number = int(url.rsplit("/", 1)[1])
        redis.Redis.from_url(url).flushdb()
        if self.admin.get(self.LOCK.format(number)) == self.token.encode():
            self.admin.delete(self.LOCK.format(number))


@pytest.fixture(scope="session")
def redis_databases() -> RedisDatabases:
    return RedisDatabases()


@pytest.fixture
def redis_url(redis_databases: RedisDatabases) -> Iterator[str]:
    url = redis_databases.acquire()
    yield url
    redis_databases.release(url)


class PostgresDatabases:
    """Creates databases cloned from a template that has taskapp's migrations applied (one migration per run)."""

    def __init__(self) -> None:
        self.template = f"taskapp_tpl_{RUN_ID}"
        self.created: list[str] = [self.template]
        self._admin(f'CREATE DATABASE "{self.template}"')
        upgrade(self.url(self.template))

    @staticmethod
    def _admin(sql: str) -> None:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    @staticmethod
    def url(name: str) -> str:
        base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        return f"{base}/{name}"

    def create(self) -> str:
        name = f"taskapp_t_{RUN_ID}_{uuid.uuid4().hex[:8]}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.created.append(name)
        return self.url(name)

    def drop_all(self) -> None:
        for name in reversed(self.created):
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases()
    yield databases
    databases.drop_all()


def make_database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, migrated database of the given backend ("sqlite" or "postgres")."""
    if backend == "postgres":
        databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
        return databases.create()
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One test body, run against every backend."""
    return make_database_url(request.param, tmp_path, request)

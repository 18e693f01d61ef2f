"""Fixtures shared by every layer: an isolated Redis database and fresh PostgreSQL/SQLite databases per test
(tests/helpers.py says how they are isolated), and settings read afresh for each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from taskapp.config import get_settings
from tests.helpers import PostgresDatabases, RedisDatabases, make_database_url

# Fuzz tests (tests/acceptance/test_fuzz.py): a quick profile by default, `--hypothesis-profile=thorough` for
# 10,000 cases per test.
settings.register_profile("ci", max_examples=60, deadline=None)
settings.register_profile("thorough", max_examples=10_000, deadline=None)
settings.load_profile("ci")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked slow run first, so that none of them is left running alone at the end of a run. Those
    that keep every core busy share one xdist group (`--dist loadgroup` in scripts/test): run at once, they
    starved each other and the tests beside them, whose bounds on time then failed."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    for item in items:
        if item.get_closest_marker("saturating") is not None:
            item.add_marker(pytest.mark.xdist_group("saturating"))


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    """Settings are read once per process; a test that sets the environment reads them anew."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def redis_databases() -> RedisDatabases:
    return RedisDatabases()


@pytest.fixture
def redis_url(redis_databases: RedisDatabases) -> Iterator[str]:
    url = redis_databases.acquire()
    yield url
    redis_databases.release(url)


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases()
    yield databases
    databases.drop_all()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One test body, run against every backend."""
    return make_database_url(request.param, tmp_path, request)

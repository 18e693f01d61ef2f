"""DATABASE_URL as people write it, read the way SQLAlchemy and psycopg take it."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from taskapp.store.engine import normalize_database_url


@pytest.mark.parametrize(
    ("given", "read"),
    [
        ("postgresql://u:p@db:5433/taskapp", "postgresql+psycopg://u:p@db:5433/taskapp"),
        ("postgres://u@db/taskapp?sslmode=require", "postgresql+psycopg://u@db/taskapp?sslmode=require"),
        (
            "postgresql://u@db1:5432,db2:5432/taskapp?target_session_attrs=read-write",
            "postgresql+psycopg://u@/taskapp?host=db1:5432&host=db2:5432&target_session_attrs=read-write",
        ),
        (
            "postgresql+psycopg://u@/taskapp?host=db1&host=db2",
            "postgresql+psycopg://u@/taskapp?host=db1&host=db2",
        ),
        ("sqlite:///taskapp.db", "sqlite:///taskapp.db"),
    ],
)
def test_database_urls_are_read_as_sqlalchemy_writes_them(given: str, read: str) -> None:
    assert normalize_database_url(given) == read


def test_several_hosts_reach_psycopg_as_libpq_lists_them() -> None:
    engine = sa.create_engine(
        normalize_database_url("postgresql://u@db1:5432,db2:5433/taskapp?target_session_attrs=read-write")
    )
    _, parameters = engine.dialect.create_connect_args(engine.url)
    assert (parameters["host"], parameters["port"]) == ("db1,db2", "5432,5433")
    assert parameters["target_session_attrs"] == "read-write"

"""Opening the job database: the URL, the SQLAlchemy engine tuned per backend, and the store for it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from taskapp.store.port import ChangeHook
from taskapp.store.sql import SqlJobStore


def normalize_database_url(url: str) -> str:
    """Use psycopg 3 for plain `postgresql://` URLs (SQLAlchemy would pick psycopg2, which we do not ship), and
    read libpq's list of hosts (`postgresql://user@db1:5432,db2:5432/taskapp?target_session_attrs=read-write`)
    as SQLAlchemy writes it (`...@/taskapp?host=db1:5432&host=db2:5432&...`)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url.removeprefix(prefix)
    scheme, separator, rest = url.partition("://")
    if not scheme.startswith("postgresql") or not separator:
        return url
    authority, _, tail = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if "," not in hosts:
        return url
    database, _, query = tail.partition("?")
    host_params = "&".join(f"host={host}" for host in hosts.split(",") if host)
    return f"{scheme}://{userinfo}{at}/{database}?{host_params}{'&' if query else ''}{query}"


def create_db_engine(url: str) -> Engine:
    """An engine tuned per backend: SQLite gets WAL, a busy timeout and write-locking transactions."""
    url = normalize_database_url(url)
    if not url.startswith("sqlite"):
        # A host that does not answer must fail a call in seconds, not hang it: the caller gets UNAVAILABLE.
        return sa.create_engine(
            url, pool_size=10, max_overflow=20, pool_pre_ping=True, connect_args={"connect_timeout": 5}
        )

    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own is deferred and can deadlock).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Take the write lock up front: concurrent writers then queue on busy_timeout instead of failing.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def open_store(url: str, change_hooks: Sequence[ChangeHook] = ()) -> SqlJobStore:
    """The store for a database URL: on PostgreSQL, the one whose hot transitions are single statements."""
    engine = create_db_engine(url)
    if engine.dialect.name == "postgresql":
        from taskapp.store.postgres import PostgresJobStore

        return PostgresJobStore(engine, change_hooks)
    return SqlJobStore(engine, change_hooks)

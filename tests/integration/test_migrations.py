"""The Alembic migrations build exactly the schema the SQLModel tables declare, on both backends."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from taskapp.store.engine import create_db_engine


def test_migrations_match_the_models(database_url: str) -> None:
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as conn:
            dialect = conn.dialect.name

            def on_this_dialect(item: object, *_: object) -> bool:
                # An index made only on PostgreSQL (`Index.ddl_if(dialect=...)`) is not SQLite's schema.
                condition = getattr(item, "_ddl_if", None)
                return condition is None or condition.dialect in (None, dialect)

            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "include_object": on_this_dialect}
            )
            assert compare_metadata(context, SQLModel.metadata) == []
            assert sa.inspect(conn).has_table("alembic_version")
    finally:
        engine.dispose()

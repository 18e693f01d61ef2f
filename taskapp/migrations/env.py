"""Alembic environment: runs taskapp's migrations against the URL `taskapp.migrate` passes in."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import taskapp.store.tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from taskapp.store.engine import create_db_engine

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    engine = create_db_engine(config.attributes["database_url"])
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                # SQLite cannot ALTER most things in place: let Alembic copy tables instead.
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


run_migrations_online()

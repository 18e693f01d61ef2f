"""Job state: the port (`port`), its backends (`sql` for SQLite and PostgreSQL, `postgres` for PostgreSQL's
single-statement fast path, `memory` for tests), the tables (`tables`) and opening a store by URL (`engine`).

Nothing is imported here, so a module that needs only the port or the in-memory store loads no SQLAlchemy.
"""

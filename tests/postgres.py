"""Fresh PostgreSQL databases on a local server, for the tests and the benchmarks.

Every fixture that needs one calls `new_database_or_skip`; the benchmarks call `create_database`
with their own server URL. psycopg is imported only when a database is made, so SQLite-only
runs need no PostgreSQL driver."""

from __future__ import annotations

import os
import uuid
from typing import NoReturn

PG_BASE = os.environ.get("HPSEARCH_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")
# The backends every API test runs on: both by default (`make test`, CI); `make test-fast` sets
# HPSEARCH_TEST_BACKENDS=sqlite for everyday work (the backend-specific code still runs in both).
BACKENDS = [
    b.strip()
    for b in os.environ.get("HPSEARCH_TEST_BACKENDS", "sqlite,postgresql").split(",")
    if b.strip() in ("sqlite", "postgresql")
] or ["sqlite", "postgresql"]


def create_database(base: str = PG_BASE, prefix: str = "hpsearch_test") -> str:
    """A fresh, empty database on the server at `base`; returns its SQLAlchemy URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url(base), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}"


def drop_database(url: str) -> None:
    """Drop the database at `url` (made by create_database), closing its open connections."""
    import psycopg

    base, name = url.rsplit("/", 1)
    with psycopg.connect(admin_url(base), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def admin_url(base: str, database: str = "postgres") -> str:
    """The libpq URL of `database` on the server at `base` (a SQLAlchemy URL without one)."""
    return base.replace("postgresql+psycopg://", "postgresql://") + f"/{database}"


def new_database_or_skip() -> str:
    """A fresh database for a test, or skip the test when PostgreSQL is not reachable. Under
    CI, which starts PostgreSQL, its absence is a failure instead. The caller drops it."""
    try:
        import psycopg
    except ImportError as exc:
        _unavailable(exc)
    try:
        return create_database()
    except psycopg.OperationalError as exc:
        _unavailable(exc)


def _unavailable(exc: Exception) -> NoReturn:
    import pytest  # here, so the benchmarks can use this module without it

    if os.environ.get("CI"):
        raise exc
    pytest.skip(f"PostgreSQL is not reachable ({type(exc).__name__}); set HPSEARCH_TEST_POSTGRES")

"""One server process at a time initialises a storage.

Opening a storage creates its tables when they are missing: Optuna's `RDBStorage` creates its
tables (and, on PostgreSQL, their enum types), writes its version row and stamps the alembic
revision, then hpsearch creates its own table. Each of these checks first and creates after, so
two processes that open the same fresh storage at once (`hpsearch serve --workers N`, or
several servers starting together on one database) both try to create, and one of them fails
at start-up with an IntegrityError; uvicorn then stops every server process. Holding this lock
around the initialisation makes the second process find everything in place.

PostgreSQL: a session-level advisory lock, so servers on any hosts agree. SQLite: an flock on a
file beside the database. Other databases: no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

# pg_advisory_lock(bigint): a key space of its own, apart from the (int, int) keys of the
# claim lock. The bytes spell "hpsinit".
PG_INIT_LOCK_KEY = 0x68_70_73_69_6E_69_74


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (created if missing), across the processes of one host."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def storage_init_lock(url: str, sqlite_path: Path | None) -> Iterator[None]:
    """Hold the storage's initialisation lock; `sqlite_path` is the SQLite file, if any."""
    if sqlite_path is not None:
        with file_lock(sqlite_path.with_suffix(sqlite_path.suffix + ".init.lock")):
            yield
        return
    if sa.make_url(url).get_backend_name() != "postgresql":
        yield
        return
    # A connection of its own, outside any pool: closing it releases the lock in any case.
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": PG_INIT_LOCK_KEY})
            try:
                yield
            finally:
                with contextlib.suppress(sa.exc.DBAPIError):
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": PG_INIT_LOCK_KEY})
    finally:
        engine.dispose()

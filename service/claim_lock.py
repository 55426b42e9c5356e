"""Serialises claims and stale-trial sweeps of one study across threads and processes."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from service.init_lock import file_lock


class ClaimLock:
    """Serialises claims and stale-trial sweeps of one study across threads and processes.

    PostgreSQL: a transaction-scoped advisory lock, so any number of server processes on any
    hosts agree. SQLite: an flock on a file beside the database (SQLite is single-host anyway).
    """

    def __init__(self, engine: sa.Engine, sqlite_path: Path | None) -> None:
        self._engine = engine
        self._sqlite_path = sqlite_path
        self._local: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()

    def _thread_lock(self, study_id: int) -> threading.Lock:
        with self._guard:
            return self._local.setdefault(study_id, threading.Lock())

    @contextlib.contextmanager
    def hold(self, study_id: int) -> Iterator[None]:
        # The thread lock first: one database connection per process waits, not one per thread.
        with self._thread_lock(study_id):
            if self._engine.dialect.name == "postgresql":
                with self._engine.begin() as conn:
                    conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:a, :b)"),
                        {"a": 0x6870, "b": study_id},
                    )
                    yield
            elif self._sqlite_path is not None:
                suffix = self._sqlite_path.suffix + f".claim-{study_id}.lock"
                with file_lock(self._sqlite_path.with_suffix(suffix)):
                    yield
            else:
                yield

"""The embedded SQLite storage as the server opens it: WAL, and commits that do not wait for an
fsync each (synchronous=NORMAL), on every pooled connection, including those opened later."""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa

from service.app import quiet_optuna
from service.settings import Settings
from service.storage import open_backend


def _pragmas(engine: sa.Engine) -> tuple[str, int]:
    with engine.connect() as conn:
        return (
            conn.exec_driver_sql("PRAGMA journal_mode").scalar_one(),
            conn.exec_driver_sql("PRAGMA synchronous").scalar_one(),
        )


def test_every_connection_is_wal_with_synchronous_normal(tmp_path: Path) -> None:
    quiet_optuna()
    url = f"sqlite:///{tmp_path / 'hpsearch.db'}"
    backend = open_backend(Settings(storage=url, data_dir=tmp_path), on_stale=None)
    engine = backend._engine
    assert _pragmas(engine) == ("wal", 1)  # 1 is NORMAL (SQLite's default is 2, FULL)
    seen: list[tuple[str, int]] = []
    # Connections opened side by side (the pool opens new ones) get it too.
    with engine.connect() as held:
        held.exec_driver_sql("SELECT 1")
        thread = threading.Thread(target=lambda: seen.append(_pragmas(engine)))
        thread.start()
        thread.join()
    assert seen == [("wal", 1)]
    backend.close()
    reopened = sa.create_engine(url)  # WAL is kept in the file; synchronous is per connection
    assert _pragmas(reopened) == ("wal", 2)
    reopened.dispose()

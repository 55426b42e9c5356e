"""Shared fixtures: every API test runs on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import Server, create_pg_database, drop_pg_database, free_port, server_env


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hpsearch.db'}"
        return
    try:
        url = create_pg_database()
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("CI"):
            raise  # CI starts PostgreSQL: its absence is a failure there, not a skip
        pytest.skip(
            f"PostgreSQL is not reachable ({type(exc).__name__}); set HPSEARCH_TEST_POSTGRES"
        )
    yield url
    drop_pg_database(url)


ServerFactory = Callable[..., Server]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    started: list[Server] = []

    def start(
        storage: str,
        *,
        data_dir: Path | None = None,
        args: list[str] | None = None,
        **settings: object,
    ) -> Server:
        server = Server(
            storage=storage,
            data_dir=data_dir or tmp_path / "server",
            port=free_port(),
            env=server_env(**settings),
            args=args or [],
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(storage_url: str, server_factory: ServerFactory) -> Server:
    return server_factory(storage_url)


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client

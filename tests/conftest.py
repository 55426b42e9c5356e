"""Shared fixtures: every API test runs on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.postgres import BACKENDS, drop_database, new_database_or_skip
from tests.servers import Server, free_port, server_env


@pytest.fixture(params=BACKENDS)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hpsearch.db'}"
        return
    url = new_database_or_skip()
    yield url
    drop_database(url)


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

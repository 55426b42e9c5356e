"""Shared fixtures: every API test runs on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.postgres import BACKENDS, drop_database, new_database_or_skip
from tests.servers import Server, ThreadServer, new_server


@pytest.fixture(params=BACKENDS)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hpsearch.db'}"
        return
    url = new_database_or_skip()
    yield url
    drop_database(url)


ServerFactory = Callable[..., Server | ThreadServer]


@pytest.hookimpl(trylast=True)  # after pytest groups the tests by their session fixtures
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (a stable sort): with `--maxschedchunk 2` (Makefile) xdist hands the
    tests out from the front of this order as processes free up, so the long ones start at once
    on every process and the short ones fill the gaps, instead of a minute-long test starting
    last and running alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """Starts servers on free ports, stopped when the test ends: on a thread of this process
    (`ThreadServer`), or as a `hpsearch serve` process (`process=True`, or with CLI `args`)
    where the test kills, restarts or reads the log of it."""
    started: list[Server | ThreadServer] = []

    def start(
        storage: str,
        *,
        data_dir: Path | None = None,
        args: list[str] | None = None,
        process: bool = False,
        **settings: object,
    ) -> Server | ThreadServer:
        server = new_server(
            storage, data_dir or tmp_path / "server", process=process, args=args, **settings
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

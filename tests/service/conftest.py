"""Fixtures for the service tests: servers shared by the tests of a module or of the session.

Starting a server takes seconds, so tests that need nothing special share one per backend:
every test works in studies of its own (unique names), so they stay independent. A server
with other settings (short leases, tokens) gets a database of its own, since the lease sweep
of one server acts on every study in its database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service.app import quiet_optuna
from service.settings import Settings
from service.storage import Backend, open_backend
from tests.postgres import BACKENDS, drop_database, new_database_or_skip
from tests.servers import Server, ThreadServer, new_server

StorageMaker = Callable[[], str]
ServerStarter = Callable[..., Server | ThreadServer]


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The storage kind a test runs on; every API test runs on both."""
    return request.param


@pytest.fixture(scope="session")
def _pg_databases() -> Iterator[list[str]]:
    created: list[str] = []
    yield created
    for url in created:
        drop_database(url)


@pytest.fixture(scope="session")
def new_storage(
    backend: str, tmp_path_factory: pytest.TempPathFactory, _pg_databases: list[str]
) -> StorageMaker:
    """Makes a fresh, empty storage of the current backend: a SQLite file or a PostgreSQL
    database (dropped at the end of the session)."""

    def make() -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'hpsearch.db'}"
        url = new_database_or_skip()
        _pg_databases.append(url)
        return url

    return make


@pytest.fixture(scope="session")
def start_server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerStarter]:
    """Starts a server on a free port, on a thread of this process (`ThreadServer`) or as a
    `hpsearch serve` process (`process=True`: for tests that read its log); the servers are
    stopped when the tests of the backend are done."""
    started: list[Server | ThreadServer] = []

    def start(
        storage: str, *, data_dir: Path | None = None, process: bool = False, **settings: object
    ) -> Server | ThreadServer:
        server = new_server(
            storage, data_dir or tmp_path_factory.mktemp("server"), process=process, **settings
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def shared_server(new_storage: StorageMaker, start_server: ServerStarter) -> Server:
    """A server with default leases, shared by the tests of the session on one backend."""
    return start_server(new_storage(), keep_top_k=2)


@pytest.fixture
def client(shared_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_server.url, timeout=60) as http:
        yield http


@pytest.fixture
def fresh_url(new_storage: StorageMaker) -> str:
    """A fresh storage of the session's backend."""
    return new_storage()


@pytest.fixture
def backend_store(fresh_url: str, tmp_path: Path) -> Iterator[Backend]:
    """A Backend of this process on `fresh_url`, as a server process opens it."""
    quiet_optuna()
    backend = open_backend(Settings(storage=fresh_url, data_dir=tmp_path), on_stale=None)
    yield backend
    backend.close()

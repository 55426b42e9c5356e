"""CLI fixtures: one real server per backend for all CLI tests (a server start costs seconds),
the CLI run in this process through `cli.main.main(argv)` (a subprocess costs a second of
imports; `run_process` remains for the smoke tests of the real program), and a study driven by
scripted workers."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

import httpx
import pytest

from cli.main import main
from tests.postgres import BACKENDS, drop_database, new_database_or_skip
from tests.scripted import ScriptedWorker, create_study
from tests.servers import REPO, ThreadServer, free_port, server_env


@dataclass
class Ran:
    """What a CLI run left: the shape of subprocess.CompletedProcess, so tests read either."""

    returncode: int
    stdout: str
    stderr: str


class Run(Protocol):
    def __call__(
        self, *args: str, server: str | None = None, env: dict[str, str] | None = None
    ) -> Ran: ...


def argv(args: tuple[str, ...], server: str | None) -> list[str]:
    return [*args, "--server", server] if server is not None else list(args)


def run_process(
    *args: str, server: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`hpsearch ARGS --server URL` as a subprocess, with no HPSEARCH_* from the caller's env."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *argv(args, server)],
        cwd=REPO,
        env={**server_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def hpsearch(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """`hpsearch ARGS --server URL` in this process, with no HPSEARCH_* from the caller's env:
    its exit status (argparse's SystemExit included) and what it printed."""
    for key in list(os.environ):
        if key.startswith("HPSEARCH_"):
            monkeypatch.delenv(key)

    def run(*args: str, server: str | None = None, env: dict[str, str] | None = None) -> Ran:
        capsys.readouterr()  # only this run's output
        with monkeypatch.context() as patch, _logging_to(sys.stderr):
            for key, value in (env or {}).items():
                patch.setenv(key, value)
            try:
                code = main(argv(args, server))
            except SystemExit as exc:  # argparse: --help, usage errors
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run


@contextlib.contextmanager
def _logging_to(stream: TextIO) -> Iterator[None]:
    """Log records on `stream` at INFO, as the real program's logging.basicConfig puts them on
    its stderr (in here pytest's handlers make basicConfig a no-op): a stray log line must
    break the tests' exact-stderr checks in this process too. Only this thread's records: the
    servers the tests run on threads of this process are other processes in real use, and
    their log lines (a claim, a lease sweep) never reach the CLI's stderr."""
    root = logging.getLogger()
    handler, level = logging.StreamHandler(stream), root.level
    cli_thread = threading.get_ident()
    handler.addFilter(lambda record: record.thread == cli_thread)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture(scope="package", params=BACKENDS)
def cli_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ThreadServer]:
    """A server shared by the CLI tests: each test uses its own study and worker names."""
    data_dir = tmp_path_factory.mktemp(f"cli-{request.param}")
    pg_url = None
    if request.param == "sqlite":
        storage = f"sqlite:///{data_dir / 'hpsearch.db'}"
    else:
        storage = pg_url = new_database_or_skip()
    # A long lease: the scripted study's running trial must not go stale while tests read it.
    server = ThreadServer(storage, data_dir, free_port(), {"lease_grace": 600})
    try:
        yield server.start()
    finally:
        server.stop()
        if pg_url:
            drop_database(pg_url)


@pytest.fixture
def api(cli_server: ThreadServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cli_server.url, timeout=60) as client:
        yield client


@pytest.fixture
def cli(cli_server: ThreadServer, hpsearch: Run) -> Run:
    """`hpsearch` against the shared server."""

    def run(*args: str, server: str | None = None, env: dict[str, str] | None = None) -> Ran:
        return hpsearch(*args, server=server or cli_server.url, env=env)

    return run


@pytest.fixture(scope="package")
def scripted(cli_server: ThreadServer) -> dict:
    """Study 'scripted', n_trials 5, driven by two scripted workers to:
    0 baseline complete 0.8 | 1 complete 0.6 | 2 pruned (threshold) | 3 failed | 4 running on
    worker gpu-b-1 (cuda:1 on host gpu-b). So: 3/5 finished, best #1, +25% over the baseline."""
    with httpx.Client(base_url=cli_server.url, timeout=60) as http:
        create_study(http, "scripted", n_trials=5, pruner={"name": "threshold", "upper": 5.0})
        a = ScriptedWorker(http, "gpu-a-0", "scripted", device="cuda:0", host="gpu-a")
        b = ScriptedWorker(http, "gpu-b-1", "scripted", device="cuda:1", host="gpu-b")
        assert a.run(a.next_trial(), [1.0, 0.9, 0.8], accuracy=0.7) == "complete"
        assert a.run(a.next_trial(), [0.9, 0.7, 0.6], accuracy=0.8) == "complete"
        assert a.run(a.next_trial(), [9.0]) == "pruned"
        failed = a.fail(a.next_trial().trial_id, "CUDA out of memory")
        assert failed.status_code == 200, failed.text
        running = b.next_trial()
        reported = b.report(running.trial_id, 0, 1.1, val_accuracy=0.5)
        assert reported.status_code == 200 and not reported.json()["prune"], reported.text
        return {"name": "scripted", "running": running}


def free_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path

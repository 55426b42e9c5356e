"""CLI fixtures: one real server per backend for all CLI tests (a server start costs seconds),
the CLI run as a real subprocess, and a fake worker that drives trials over HTTP."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.postgres import drop_database, new_database_or_skip
from tests.servers import REPO, Server, digits_spec, free_port, server_env

Run = Callable[..., subprocess.CompletedProcess[str]]


def run_cli(*args: str, server: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`hpsearch ARGS --server URL` as a subprocess, with no HPSEARCH_* from the caller's env."""
    cmd = [sys.executable, "-m", "cli.main", *args]
    if server is not None:
        cmd += ["--server", server]
    return subprocess.run(cmd, cwd=REPO, env={**server_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="package", params=["sqlite", "postgresql"])
def cli_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Server]:
    """A server shared by the CLI tests: each test uses its own study and worker names."""
    data_dir = tmp_path_factory.mktemp(f"cli-{request.param}")
    pg_url = None
    if request.param == "sqlite":
        storage = f"sqlite:///{data_dir / 'hpsearch.db'}"
    else:
        storage = pg_url = new_database_or_skip()
    # A long lease: the scripted study's running trial must not go stale while tests read it.
    server = Server(storage=storage, data_dir=data_dir, port=free_port(),
                    env=server_env(lease_grace=600))
    try:
        yield server.start()
    finally:
        server.stop()
        if pg_url:
            drop_database(pg_url)


@pytest.fixture
def api(cli_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{cli_server.url}/api/v1", timeout=60) as client:
        yield client


@pytest.fixture
def cli(cli_server: Server) -> Run:
    def run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, server=cli_server.url, **kwargs)  # type: ignore[arg-type]

    return run


@dataclass
class FakeWorker:
    """Plays a GPU worker: claims a trial of one study, reports epochs, completes or fails it."""

    api: httpx.Client
    study: str
    worker_id: str
    device: str = "cuda:0"
    host: str = "gpu-a"

    def claim(self) -> dict:
        r = self.api.post("/trials/claim", json={"worker_id": self.worker_id, "study": self.study,
                                                  "device": self.device, "host": self.host})
        assert r.status_code == 200, r.text
        return r.json()

    def report(self, trial: dict, losses: list[float], accuracy: float = 0.5) -> bool:
        """Report each epoch's loss; True when the server pruned the trial."""
        for epoch, loss in enumerate(losses):
            r = self.api.post(f"/trials/{trial['trial_id']}/report",
                              json={"epoch": epoch, "val_loss": loss, "val_accuracy": accuracy})
            assert r.status_code == 200, r.text
            if r.json()["prune"]:
                return True
        return False

    def run(self, losses: list[float], accuracy: float = 0.5) -> dict:
        """A whole trial: claim, report every epoch, complete with the last loss."""
        trial = self.claim()
        assert not self.report(trial, losses, accuracy)
        r = self.api.post(f"/trials/{trial['trial_id']}/complete",
                          json={"val_loss": losses[-1], "val_accuracy": accuracy})
        assert r.status_code == 200, r.text
        return trial

    def fail(self, reason: str) -> dict:
        trial = self.claim()
        r = self.api.post(f"/trials/{trial['trial_id']}/fail", json={"reason": reason})
        assert r.status_code == 200, r.text
        return trial


def create_study(api: httpx.Client, name: str, **overrides: object) -> dict:
    r = api.post("/studies", json=digits_spec(name, **overrides))
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="package")
def scripted(cli_server: Server) -> dict:
    """Study 'scripted', n_trials 5, driven by two fake workers to:
    0 baseline complete 0.8 | 1 complete 0.6 | 2 pruned (threshold) | 3 failed | 4 running on
    worker gpu-b-1 (cuda:1 on host gpu-b). So: 3/5 finished, best #1, +25% over the baseline."""
    with httpx.Client(base_url=f"{cli_server.url}/api/v1", timeout=60) as api:
        create_study(api, "scripted", n_trials=5, pruner={"name": "threshold", "upper": 5.0})
        a = FakeWorker(api, "scripted", "gpu-a-0")
        b = FakeWorker(api, "scripted", "gpu-b-1", device="cuda:1", host="gpu-b")
        a.run([1.0, 0.9, 0.8], accuracy=0.7)
        a.run([0.9, 0.7, 0.6], accuracy=0.8)
        assert a.report(a.claim(), [9.0])
        a.fail("CUDA out of memory")
        running = b.claim()
        b.report(running, [1.1])
        return {"name": "scripted", "running": running}


def free_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path

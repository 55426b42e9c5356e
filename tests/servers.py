"""Real servers for tests on free ports: `hpsearch serve` subprocesses (`Server`) or the app on
a thread of the test process (`ThreadServer`); fresh PostgreSQL databases are in
tests/postgres.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cli.readiness import ServerNotReady, wait_until_healthy

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """One `hpsearch serve` process. stop() is graceful, kill() is kill -9."""

    storage: str
    data_dir: Path
    port: int
    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"server-{self.port}.log"

    def start(self, timeout: float = 60) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "cli.main",
            "serve",
            "--port",
            str(self.port),
            "--storage",
            self.storage,
            "--data-dir",
            str(self.data_dir),
            *self.args,
        ]
        with open(self.log_path, "ab") as log:  # the child keeps its own handle
            self.process = subprocess.Popen(
                cmd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )
        try:
            wait_until_healthy(self.url, self.process, timeout)
        except ServerNotReady as exc:
            raise RuntimeError(f"{exc}:\n{self.log()}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        self._signal(signal.SIGTERM, wait=20)

    def kill(self) -> None:
        self._signal(signal.SIGKILL, wait=10)

    def _signal(self, sig: int, wait: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, sig)  # the whole group: uvicorn's worker processes too
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@dataclass
class ThreadServer:
    """`create_app(Settings(...))` under uvicorn on a thread of the test process: a real server
    on a real port, without the 1.4 CPU s a `hpsearch serve` process spends on its imports (58
    server processes per `make test` before this, most of them for a few requests). For tests
    that need no process of the server's own; kill -9, restarts, several server processes, the
    log and start failures use `Server`."""

    storage: str
    data_dir: Path
    port: int
    settings: dict[str, object] = field(default_factory=dict)
    _server: object | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> ThreadServer:
        # Here, not at the top: the benchmarks and `Server` users need none of the service.
        import uvicorn

        from service.app import create_app
        from service.settings import Settings

        self.data_dir.mkdir(parents=True, exist_ok=True)
        settings = Settings(storage=self.storage, data_dir=self.data_dir, **self.settings)
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
        server = self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, name=f"server-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the in-process server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True  # type: ignore[attr-defined]
            self._thread.join(timeout=20)


def new_server(
    storage: str,
    data_dir: Path,
    *,
    process: bool = False,
    args: list[str] | None = None,
    **settings: object,
) -> Server | ThreadServer:
    """A server on a free port, not started: on a thread of this process, or a `hpsearch serve`
    process where the test needs one (`process=True`, or CLI `args`)."""
    if process or args:
        return Server(storage, data_dir, free_port(), server_env(**settings), args or [])
    return ThreadServer(storage, data_dir, free_port(), settings)


def server_env(**settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPSEARCH_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(REPO)
    for key, value in settings.items():
        env[f"HPSEARCH_{key.upper()}"] = str(value)
    return env


def digits_spec(name: str, **overrides: object) -> dict:
    """A small study on scikit-learn's digits that any test can POST. The network is the
    cheapest torchvision classifier (a ninth of resnet18's CPU per step at 16 px): tests that
    train for real pay for every step, and none of them is about the architecture."""
    spec: dict = {
        "name": name,
        "model": {"arch": "shufflenet_v2_x0_5", "weights": None},
        "data": {"kind": "digits", "image_size": 16, "batch_size": 64},
        "training": {"epochs": 3, "seed": 0},
        "search_space": "sgd_steplr_warmup",
        "sampler": {"name": "tpe", "seed": 1},
        "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        "n_trials": 4,
    }
    spec.update(overrides)
    return spec

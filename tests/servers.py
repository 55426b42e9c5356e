"""Real servers for tests: `hpsearch serve` subprocesses on free ports, and fresh PostgreSQL
databases on the local server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
PG_BASE = os.environ.get("HPSEARCH_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_pg_database() -> str:
    """A fresh, empty database; returns its SQLAlchemy URL."""
    import psycopg

    name = f"hpsearch_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(PG_BASE, "postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_BASE}/{name}"


def drop_pg_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(_libpq(PG_BASE, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _libpq(base: str, database: str) -> str:
    return base.replace("postgresql+psycopg://", "postgresql://") + f"/{database}"


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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited at start:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not come up:\n{self.log()}")

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


def server_env(**settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPSEARCH_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(REPO)
    for key, value in settings.items():
        env[f"HPSEARCH_{key.upper()}"] = str(value)
    return env


def digits_spec(name: str, **overrides: object) -> dict:
    """A small study on scikit-learn's digits that any test can POST."""
    spec: dict = {
        "name": name,
        "model": {"arch": "resnet18", "weights": None},
        "data": {"kind": "digits", "image_size": 16, "batch_size": 64},
        "training": {"epochs": 3, "seed": 0},
        "search_space": "sgd_steplr_warmup",
        "sampler": {"name": "tpe", "seed": 1},
        "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        "n_trials": 4,
    }
    spec.update(overrides)
    return spec

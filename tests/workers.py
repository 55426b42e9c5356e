"""Real `hpsearch worker` subprocesses for tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.servers import REPO


def worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPSEARCH_")}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    return env


def start_worker(server_url: str, log_path: Path, *args: str, **env: str) -> subprocess.Popen:
    """Start `hpsearch worker` on the CPU with one thread; its output goes to log_path."""
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "worker",
        "--server",
        server_url,
        "--device",
        "cpu",
        "--threads",
        "1",
        *args,
    ]
    with open(log_path, "ab") as log:  # the child keeps its own handle
        return subprocess.Popen(
            cmd,
            env=worker_env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )

"""Real `hpsearch worker` processes for tests.

A worker process spends about 8 CPU s importing torch, torchvision and scikit-learn before it
trains: more than a test's trials train. So test workers are forked from a template process
that imported them once per test process (multiprocessing's forkserver with those modules
preloaded; the template starts with the first worker). Each worker is still a process of its
own running `hpsearch worker`'s `main`, with its own session, environment, log and exit
status, and it can be signalled and killed like any other.
`tests/cli/test_process.py` keeps smoke tests of the program started from scratch.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.servers import REPO

# What every worker imports before its first trial (cli.main imports the rest on demand).
PRELOAD = ["torch", "torchvision", "sklearn.datasets", "worker.runner", "worker.supervisor"]
_forks = multiprocessing.get_context("forkserver")
_forks.set_forkserver_preload(PRELOAD)


def worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPSEARCH_")}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    return env


class WorkerProcess:
    """The parts of subprocess.Popen that tests use, for a forked worker."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self._process = process
        self.pid = process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired("hpsearch worker", timeout or 0)
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _run_worker(argv: list[str], env: dict[str, str], log_path: str) -> None:
    """In the forked process: become `hpsearch worker ARGV` writing to log_path."""
    os.setsid()  # as start_new_session: signals to the test's group do not reach it
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # as a Popen child's: a real fd 0
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 (the process's own)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (the process's own)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(env)
    os.chdir(REPO)
    sys.argv = ["hpsearch", *argv]
    from cli.main import main

    sys.exit(main(argv))


def start_worker(server_url: str, log_path: Path, *args: str, **env: str) -> WorkerProcess:
    """Start `hpsearch worker` on the CPU with one thread; its output goes to log_path."""
    argv = ["worker", "--server", server_url, "--device", "cpu", "--threads", "1", *args]
    process = _forks.Process(target=_run_worker, args=(argv, worker_env(**env), str(log_path)))
    process.start()
    return WorkerProcess(process)

"""Waiting for a freshly started `hpsearch serve` process to answer `GET /healthz`.

The one place that knows how: `hpsearch demo`, the test fixtures and the benchmarks all start
the server as a subprocess and wait here."""

from __future__ import annotations

import subprocess
import time

import httpx

POLL_S = 0.2


class ServerNotReady(RuntimeError):
    """The server did not answer 200 on /healthz in time."""


class ServerExited(ServerNotReady):
    """The server process ended before it answered."""


def wait_until_healthy(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    """Return once `{url}/healthz` answers 200; raise ServerExited as soon as `process` ends,
    ServerNotReady after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerExited(f"the server exited at start with status {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(POLL_S)
    raise ServerNotReady(f"the server did not answer at {url} within {timeout:g} s")

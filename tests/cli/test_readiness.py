"""cli/readiness.py, the one wait for a started server, on its two ways to fail (a server that
comes up is every fixture's start)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from cli.readiness import ServerExited, ServerNotReady, wait_until_healthy
from tests.cli.conftest import free_url


def test_a_process_that_exits_fails_at_once() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    started = time.monotonic()
    with pytest.raises(ServerExited, match="exited at start with status 3"):
        wait_until_healthy(free_url(), process, timeout=30)
    assert time.monotonic() - started < 10  # not the whole timeout


def test_a_silent_process_times_out() -> None:
    url = free_url()  # nothing listens there
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(ServerNotReady, match=f"did not answer at {url} within 0.3 s") as info:
            wait_until_healthy(url, process, timeout=0.3)
        assert not isinstance(info.value, ServerExited)
    finally:
        process.kill()
        process.wait(timeout=10)

"""`hpsearch watch`: follows a study while a fake worker runs it, ends by itself when the study is
done, redraws in place on a terminal, and leaves quietly on Ctrl-C."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import httpx

from tests.cli.conftest import FakeWorker, create_study
from tests.servers import REPO, Server, server_env


def start_watch(server: Server, study: str, **popen: object) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "cli.main", "watch", study, "--interval", "0.2",
           "--server", server.url]
    return subprocess.Popen(cmd, cwd=REPO, env=server_env(), text=True, **popen)  # type: ignore[call-overload]


def test_watch_follows_the_study_until_it_is_done(cli_server: Server, api: httpx.Client) -> None:
    create_study(api, "watched", n_trials=2, pruner={"name": "none"})
    proc = start_watch(cli_server, "watched", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed at once, before any trial ran
        assert re.match(r"^\d\d:\d\d:\d\d watched running 0/2 finished \| 0 running 1 waiting", first)
        worker = FakeWorker(api, "watched", "w-watch")
        worker.run([1.0, 0.9, 0.8], accuracy=0.6)
        time.sleep(0.6)  # let the watch see the halfway state
        best = worker.run([0.9, 0.6, 0.5], accuracy=0.9)
        out, err = proc.communicate(timeout=30)  # it must end by itself: the study is done
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    lines = [first, *out.splitlines()]
    assert any(" watched running 1/2 finished " in line for line in lines)
    assert any(" watched done 2/2 finished " in line and "best #1 val loss 0.5000" in line
               for line in lines)
    assert "study watched is done: 2/2 trials finished" in lines
    assert "best: trial 1, val loss 0.5000, accuracy 90.0%, +37.5% vs the baseline" in out
    params = " ".join(f"{k}={v:.3g}" for k, v in best["params"].items())
    assert f"      {params}" in lines
    assert f"its config: hpsearch best --server {cli_server.url} watched -k 1 --format yaml" in lines

    # On a terminal: the same study (now done) drawn as a full frame behind an ANSI clear.
    text = _run_in_pty(cli_server, "watched")
    assert "\x1b[H\x1b[J" in text
    assert "study watched: done, 2/2 finished" in text
    assert "best: trial 1, val loss 0.5000" in text
    assert "workers: 0 on this study" in text


def _run_in_pty(server: Server, study: str) -> str:
    master, slave = pty.openpty()
    proc = start_watch(server, study, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        os.close(master)
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def test_ctrl_c_leaves_quietly(cli_server: Server, api: httpx.Client) -> None:
    create_study(api, "never-ends", n_trials=3)
    proc = start_watch(cli_server, "never-ends", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert "never-ends running" in proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err

"""`hpsearch watch` as a real process: follows a study while a scripted worker runs it, ends by
itself when the study is done, redraws in place on a terminal, rides out a server restart, leaves
quietly on Ctrl-C."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ServerFactory
from tests.scripted import ScriptedWorker, create_study
from tests.servers import REPO, Server, ThreadServer, server_env

CLEAR = "\x1b[H\x1b[J"


def _ctrl_c_as_at_a_terminal() -> None:
    """In the child, before exec: SIGINT delivered and not ignored, as in a person's shell.
    A child inherits its parent's ignored signals and signal mask, and a test process that has
    run other tests (threads of libraries that block signals, a handler left behind) is no
    person's shell: in long runs these tests saw `watch` never get the Ctrl-C they sent."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Watch:
    """`hpsearch watch STUDY --interval 0.2` with its output (stdout and stderr together) on a
    pipe, or on a pseudo-terminal as a person at a terminal runs it."""

    def __init__(self, server: Server | ThreadServer, study: str, terminal: bool = False) -> None:
        self.fd, child = pty.openpty() if terminal else os.pipe()
        cmd = [
            sys.executable,
            "-m",
            "cli.main",
            "watch",
            study,
            "--interval",
            "0.2",
            "--server",
            server.url,
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=server_env(),
            stdout=child,
            stderr=child,
            preexec_fn=_ctrl_c_as_at_a_terminal,
        )
        os.close(child)
        self.text = ""

    def read_until(self, needle: str | None, timeout: float = 30, after: int = 0) -> str:
        """Read until `needle` shows past offset `after`; None: until the program closes its
        output. Returns everything read so far."""
        deadline = time.monotonic() + timeout
        while needle is None or needle not in self.text[after:]:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} within {timeout}s in:\n{self.text}")
            if not select.select([self.fd], [], [], 0.5)[0]:
                continue
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: the program closed the terminal
                data = b""
            if not data:
                if needle is None:
                    break
                raise AssertionError(f"output ended without {needle!r}:\n{self.text}")
            self.text += data.decode(errors="replace").replace("\r\n", "\n")
        return self.text

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        """Wait for the program to end by itself; its exit status and whole output."""
        text = self.read_until(None, timeout)
        return self.proc.wait(timeout=10), text

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self.fd)


def test_watch_follows_the_study_until_it_is_done(
    cli_server: ThreadServer, api: httpx.Client
) -> None:
    create_study(api, "watched", n_trials=2, pruner={"name": "none"})
    watch = Watch(cli_server, "watched")
    try:
        first = watch.read_until("\n")  # printed at once, before any trial ran
        assert re.match(
            r"^\d\d:\d\d:\d\d watched running 0/2 finished \| 0 running 1 waiting", first
        )
        worker = ScriptedWorker(api, "w-watch", "watched")
        assert worker.run(worker.next_trial(), [1.0, 0.9, 0.8], accuracy=0.6) == "complete"
        watch.read_until(" watched running 1/2 finished ")
        best = worker.next_trial()
        assert worker.run(best, [0.9, 0.6, 0.5], accuracy=0.9) == "complete"
        status, out = watch.finish()  # it must end by itself: the study is done
    finally:
        watch.close()
    assert status == 0, out
    lines = out.splitlines()
    assert any(
        " watched done 2/2 finished " in line and "best #1 val loss 0.5000" in line
        for line in lines
    )
    assert "study watched is done: 2/2 trials finished" in lines
    assert "best: trial 1, val loss 0.5000, accuracy 90.0%, +37.5% vs the baseline" in out
    params = " ".join(f"{k}={v:.3g}" for k, v in best.params.items())
    assert f"      {params}" in lines
    hint = f"its config: hpsearch best --server {cli_server.url} watched -k 1 --format yaml"
    assert hint in lines
    assert CLEAR not in out  # a pipe gets plain lines

    # On a terminal: the same study (now done) drawn as a full frame behind an ANSI clear.
    term = Watch(cli_server, "watched", terminal=True)
    try:
        status, text = term.finish()
    finally:
        term.close()
    assert status == 0
    assert text.startswith(CLEAR + "hpsearch watch  " + cli_server.url)
    assert "study watched: done, 2/2 finished" in text
    assert "best: trial 1, val loss 0.5000" in text
    assert "workers: 0 on this study" in text


def test_terminal_view_shows_running_trials_and_ctrl_c_leaves_quietly(
    cli_server: ThreadServer, scripted: dict
) -> None:
    term = Watch(cli_server, "scripted", terminal=True)
    try:
        term.read_until("running trials (1):\n")
        text = term.read_until("1.1000")  # in the running trial's row, and nowhere else
        assert text.startswith(CLEAR + "hpsearch watch  " + cli_server.url)
        section = text.split("running trials (1):\n")[1].splitlines()
        number = scripted["running"].number
        assert section[0].split()[:5] == ["#", "WORKER", "DEVICE", "EPOCHS", "VAL"]
        assert section[1].split()[:5] == [str(number), "gpu-b-1", "cuda:1", "1/3", "1.1000"]
        term.read_until(CLEAR, timeout=5, after=len(text))  # a second frame, drawn in place
        term.proc.send_signal(signal.SIGINT)
        assert term.proc.wait(timeout=20) == 130
        rest = term.read_until(None, timeout=5)
    finally:
        term.close()
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest


def test_ctrl_c_leaves_quietly_when_piped(cli_server: ThreadServer, api: httpx.Client) -> None:
    create_study(api, "never-ends", n_trials=3)
    watch = Watch(cli_server, "never-ends")
    try:
        watch.read_until("never-ends running")
        watch.proc.send_signal(signal.SIGINT)
        status, out = watch.finish(timeout=20)
    finally:
        watch.close()
    assert status == 130
    assert "Traceback" not in out and "KeyboardInterrupt" not in out


def test_watch_rides_out_a_server_restart(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = server_factory(f"sqlite:///{tmp_path / 'restart.db'}", process=True)
    with httpx.Client(base_url=server.url, timeout=60) as api:
        create_study(api, "restarted", n_trials=1, pruner={"name": "none"})
    watch = Watch(server, "restarted")
    try:
        watch.read_until("restarted running 0/1 finished")
        server.stop()
        mark = len(watch.text)
        watch.read_until(
            f"cannot reach the server at {server.url}: connection refused (retrying)", after=mark
        )
        server.start()  # the same port and database
        with httpx.Client(base_url=server.url, timeout=60) as api:
            worker = ScriptedWorker(api, "w-restart", "restarted")
            assert worker.run(worker.next_trial(), [0.7]) == "complete"
        status, out = watch.finish()
    finally:
        watch.close()
    assert status == 0, out
    assert "study restarted is done: 1/1 trials finished" in out
    assert "Traceback" not in out

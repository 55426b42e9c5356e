"""Smoke tests of the real program (`python -m cli.main`); the other CLI tests call
`cli.main.main` in the test process."""

from __future__ import annotations

from tests.cli.conftest import free_url, run_process
from tests.servers import ThreadServer


def test_help_lists_the_commands() -> None:
    r = run_process("--help")
    assert r.returncode == 0, r.stderr
    for command in (
        "serve",
        "worker",
        "submit",
        "status",
        "watch",
        "best",
        "workers",
        "stop",
        "delete",
        "demo",
    ):
        assert command in r.stdout


def test_status_against_a_real_server(cli_server: ThreadServer, scripted: dict) -> None:
    r = run_process("status", server=cli_server.url)
    assert (r.returncode, r.stderr) == (0, "")
    row = next(line.split() for line in r.stdout.splitlines() if line.startswith("scripted "))
    assert row[:3] == ["scripted", "running", "3/5"]


def test_a_failure_is_one_line_not_a_traceback() -> None:
    url = free_url()  # nothing listens there
    r = run_process("best", "s", "--format", "yaml", server=url)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == f"hpsearch best: cannot reach the server at {url}: connection refused\n"


def test_usage_error_exits_2() -> None:
    r = run_process("best")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "the following arguments are required: study" in r.stderr

"""Every failure is one line on stderr and a non-zero exit, never a traceback: no server, a bad
file, a missing or wrong token."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.cli.conftest import Run, free_url, write
from tests.conftest import ServerFactory
from tests.servers import digits_spec

COMMANDS = [
    ["status"],
    ["status", "s"],
    ["watch", "s"],
    ["best", "s"],
    ["best", "s", "--format", "yaml"],
    ["workers"],
    ["stop", "s"],
    ["delete", "s"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: "-".join(c))
def test_unreachable_server(hpsearch: Run, command: list[str]) -> None:
    url = free_url()  # a free port: nothing listens there
    r = hpsearch(*command, server=url)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == (
        f"hpsearch {command[0]}: cannot reach the server at {url}: connection refused\n"
    )


def test_unreachable_server_on_submit(hpsearch: Run, tmp_path: Path) -> None:
    url = free_url()
    path = write(tmp_path / "s.yaml", yaml.safe_dump(digits_spec("x")))
    r = hpsearch("submit", str(path), server=url)
    assert (r.returncode, r.stderr) == (
        1,
        f"hpsearch submit: cannot reach the server at {url}: connection refused\n",
    )


def test_server_from_the_environment_without_scheme(hpsearch: Run) -> None:
    port = free_url().rsplit(":", 1)[1]
    r = hpsearch("workers", env={"HPSEARCH_SERVER": f"127.0.0.1:{port}/"})
    assert r.stderr == (
        f"hpsearch workers: cannot reach the server at http://127.0.0.1:{port}: "
        "connection refused\n"
    )


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.yaml", None, "no such file: {path}"),
        (
            "broken.yaml",
            "name: x\n  model: [1,\n",
            "{path} is not valid YAML: line 2, column 8: mapping values are not allowed here",
        ),
        (
            "broken.json",
            '{"name": "x",}',
            "{path} is not valid JSON: line 1, column 14: Expecting property name enclosed in "
            "double quotes",
        ),
        (
            "list.yaml",
            "- name: x\n",
            "{path} must hold a study spec (a mapping of fields), but it is a list",
        ),
        ("empty.yaml", "", "{path} must hold a study spec (a mapping of fields), but it is empty"),
    ],
)
def test_bad_spec_file(
    hpsearch: Run, tmp_path: Path, name: str, text: str | None, message: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    r = hpsearch("submit", str(path), server=free_url())  # the file is read before any request
    assert r.returncode == 1
    assert r.stderr == f"hpsearch submit: {message.format(path=path)}\n"


def test_tokens(hpsearch: Run, server_factory: ServerFactory, tmp_path: Path) -> None:
    server = server_factory(
        f"sqlite:///{tmp_path / 'tokens.db'}", admin_token="s3cret-admin", read_token="s3cret-read"
    )
    r = hpsearch("status", server=server.url)
    assert r.returncode == 1
    assert r.stderr == (
        "hpsearch status: server answered 401: a valid token is required: send "
        "'Authorization: Bearer <token>' (pass --token or set HPSEARCH_TOKEN)\n"
    )

    path = write(tmp_path / "s.yaml", yaml.safe_dump(digits_spec("guarded")))
    r = hpsearch("submit", str(path), "--token", "s3cret-read", server=server.url)
    assert r.returncode == 1
    assert r.stderr == (
        "hpsearch submit: server answered 403: this needs the admin token "
        "(pass --token or set HPSEARCH_TOKEN)\n"
    )

    r = hpsearch("submit", str(path), "--token", "s3cret-admin", server=server.url)
    assert r.returncode == 0, r.stderr
    assert "s3cret" not in r.stdout  # the hint names the flag, never the token
    r = hpsearch("status", server=server.url, env={"HPSEARCH_TOKEN": "s3cret-read"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].split()[:3] == ["guarded", "running", "0/4"]


class _NotHpsearch(BaseHTTPRequestHandler):
    """Another program on the port: a JSON answer of another shape, or a proxy's HTML error."""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path.startswith("/api/v1/studies/proxied"):
            body, status, kind = b"<html><h1>Bad Gateway</h1></html>", 502, "text/html"
        else:
            body, status, kind = b'[{"hello": "world"}]', 200, "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_hpsearch() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _NotHpsearch)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_answers_of_another_program(hpsearch: Run, not_hpsearch: str) -> None:
    r = hpsearch("status", server=not_hpsearch)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(
        f"hpsearch status: unexpected answer from the server at {not_hpsearch} (KeyError: 'name')"
    )
    assert r.stderr.count("\n") == 1

    r = hpsearch("best", "proxied", server=not_hpsearch)
    assert (r.returncode, r.stderr) == (1, "hpsearch best: server answered 502: Bad Gateway\n")

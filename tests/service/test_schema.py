"""Property-based API testing with schemathesis against the live server's /openapi.json, on a
temporary SQLite storage: no generated request, valid or not, gets a 5xx, and every response
is one the schema declares (status code, content type, body).

schemathesis runs as its own command (`schemathesis run`): its pytest plugin does not work with
the installed pytest. The run is bounded by the number of examples per operation."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Server, free_port, server_env

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)


@pytest.fixture
def schema_server(tmp_path: Path) -> Iterator[Server]:
    server = Server(
        storage=f"sqlite:///{tmp_path / 'hpsearch.db'}",
        data_dir=tmp_path / "server",
        port=free_port(),
        env=server_env(),
    )
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
def test_every_response_conforms_to_the_schema(schema_server: Server, tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{schema_server.url}/openapi.json",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing,stateful",  # stateful: claim -> its trial (links)
        "--max-examples",
        "10",
        "--seed",
        "20261128",
        "--workers",
        "1",  # its coverage phase is not thread-safe on this Python
        "--request-timeout",
        "30",
        "--suppress-health-check",
        "all",
    ]
    env = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env, check=False
    )
    report = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, report
    assert " passed" in report
    log = schema_server.log_path.read_text(errors="replace")
    assert "Traceback" not in log and '" 500 ' not in log, log[-4000:]

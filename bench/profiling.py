"""Sampling profiles of a running server with py-spy (attached by pid; nothing in the server
changes), summarised as the share of samples under each function and each package.

py-spy is not a project dependency: install it anywhere (`pip install --target /tmp/tools
py-spy`) and put its `bin` on PATH or pass its path; without it the benchmarks run unprofiled."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")
# A leaf frame's package: the first of these found in its file path.
PACKAGES = (
    "service/",
    "optuna/",
    "sqlalchemy/",
    "psycopg",
    "sqlite3/",
    "pydantic",
    "fastapi/",
    "starlette/",
    "uvicorn/",
    "anyio/",
    "httptools",
    "logging/",
    "prometheus_client/",
    "json/",
    "threading.py",
    "selectors.py",
)


MODES = {"active": [], "gil": ["--gil"], "wall": ["--idle"]}


def find_py_spy(given: str | None) -> str | None:
    return (
        given
        or shutil.which("py-spy")
        or ("/tmp/tools/bin/py-spy" if Path("/tmp/tools/bin/py-spy").exists() else None)
    )


@contextlib.contextmanager
def py_spy(
    pid: int, out: Path, py_spy_bin: str | None, mode: str = "active", rate: int = 100
) -> Iterator[Path | None]:
    """Record `pid` (and its children) while the block runs; yield the raw output path, or
    None when py-spy is not available. `mode` is one of MODES: "active" samples threads that
    run (Python or C, e.g. SQLite), "gil" only the thread holding the GIL (where one server
    process's single core of Python goes), "wall" every thread, waiting ones too."""
    binary = find_py_spy(py_spy_bin)
    if binary is None:
        yield None
        return
    cmd = [
        binary,
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--output",
        str(out),
        "--rate",
        str(rate),
        "--subprocesses",
        "--nonblocking",
    ]
    cmd += MODES[mode]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield out
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for frame in stack.split(";"):
        m = _FRAME.match(frame.strip())
        if m:
            out.append((m["func"], m["file"]))
    return out


def _package(path: str) -> str:
    return next((p.strip("/") for p in PACKAGES if p in path), "other")


def summarize(raw: Path, top: int = 25, match: str = "service/") -> str:
    """Inclusive share of samples per function whose file contains `match`, and the share of
    leaf (self) samples per package."""
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count, frames = int(count_text), _frames(stack)
        total += count
        if frames:
            leaves[_package(frames[-1][1])] += count
        seen = {
            f"{func} ({file.split('site-packages/')[-1]})" for func, file in frames if match in file
        }
        for name in seen:
            inclusive[name] += count
    if total == 0:
        return "no samples"
    lines = [f"{total} samples; inclusive share of functions in {match!r} files:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines.append("self (leaf) share by package:")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in leaves.most_common()]
    return "\n".join(lines)

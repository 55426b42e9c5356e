"""What every benchmark needs: a fresh storage (a SQLite file or a PostgreSQL database), a real
`hpsearch serve` subprocess on it, the study spec and its raw-Optuna twin, the synthetic loss,
client processes that start their clocks together, and latency statistics. Databases and server
starts go through the same helpers as the tests' (tests/postgres.py, cli/readiness.py).

Loopback only: the server listens on 127.0.0.1 and PostgreSQL is the local server."""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import platform
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cli.readiness import ServerNotReady, wait_until_healthy
from tests.postgres import admin_url, create_database, drop_database
from tests.servers import free_port

PG_BASE = os.environ.get("HPSEARCH_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")
API = "/api/v1"
SPACE = "sgd_steplr_warmup"
EPOCHS = 5
BACKENDS = ("sqlite", "postgresql")
# The service's defaults for TPE and the median pruner, given explicitly to both sides.
TPE_OPTIONS: dict[str, Any] = {
    "n_startup_trials": 10,
    "n_ei_candidates": 24,
    "multivariate": True,
    "constant_liar": True,
}
MEDIAN_OPTIONS: dict[str, Any] = {"n_startup_trials": 5, "n_warmup_steps": 1}


# --- storages --------------------------------------------------------------------------------
@contextlib.contextmanager
def fresh_storage(kind: str, folder: Path) -> Iterator[str]:
    """Yield the SQLAlchemy URL of an empty storage; a PostgreSQL database is dropped after."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        return
    if kind != "postgresql":
        raise ValueError(f"unknown backend {kind!r}; known: {', '.join(BACKENDS)}")
    url = create_database(PG_BASE, prefix="hpsearch_bench")
    try:
        yield url
    finally:
        drop_database(url)


PG_COUNTERS = (
    "xact_commit",
    "xact_rollback",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
)


def pg_counters(url: str) -> dict[str, int] | None:
    """PostgreSQL's activity counters of the database at `url` (None for SQLite): transactions
    and rows, which do not depend on how loaded the machine is. Read them after every client
    has disconnected; a backend flushes its counts when it exits."""
    if not url.startswith("postgresql"):
        return None
    import psycopg

    time.sleep(1.0)  # let the exiting backends flush their statistics
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url(PG_BASE), autocommit=True) as conn:
        row = conn.execute(
            f"SELECT {', '.join(PG_COUNTERS)} FROM pg_stat_database WHERE datname = %s", (name,)
        ).fetchone()
    return None if row is None else dict(zip(PG_COUNTERS, map(int, row), strict=True))


def raw_storage(url: str) -> Any:
    """An RDBStorage opened the way the service opens its own: SQLite waits for the file lock
    (60 s) in WAL mode with synchronous=NORMAL (`service.storage.tune_sqlite`); PostgreSQL
    pings pooled connections."""
    import optuna

    from service.storage import tune_sqlite

    if url.startswith("sqlite"):
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        tune_sqlite(storage.engine)
        return storage
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def distributions() -> dict[str, Any]:
    """The named search space's Optuna distributions, exactly as the service builds them."""
    from service.search_space import load_named_space, to_distributions
    from service.settings import DEFAULT_SEARCH_SPACES

    return to_distributions(load_named_space(SPACE, DEFAULT_SEARCH_SPACES))


def raw_sampler() -> Any:
    import optuna

    return optuna.samplers.TPESampler(**TPE_OPTIONS)


def raw_pruner() -> Any:
    import optuna

    return optuna.pruners.MedianPruner(**MEDIAN_OPTIONS)


# --- the service -----------------------------------------------------------------------------
REPO = Path(__file__).resolve().parent.parent


@dataclass
class ServerProcess:
    """One `hpsearch serve` subprocess (its own session, so stop() ends uvicorn's children)."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def wait_ready(self, timeout: float) -> None:
        try:
            wait_until_healthy(self.url, self.process, timeout)
        except ServerNotReady as exc:
            raise RuntimeError(f"{exc}:\n{self.log()}") from None

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            if self.process.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=wait)


@contextlib.contextmanager
def running_server(
    storage_url: str,
    folder: Path,
    log_level: str = "info",
    args: Sequence[str] = (),
    code: Path = REPO,
) -> Iterator[ServerProcess]:
    """A real `hpsearch serve` on a free loopback port, run from the checkout at `code` (a copy
    with an experimental change, say), stopped on exit."""
    data_dir = folder / f"server-{uuid.uuid4().hex[:8]}"
    data_dir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPSEARCH_")}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(code), HPSEARCH_LOG_LEVEL=log_level)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--storage",
        storage_url,
        "--data-dir",
        str(data_dir),
        *args,
    ]
    log_path = data_dir / "server.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            cmd, env=env, cwd=code, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        server.wait_ready(timeout=120)
        yield server
    finally:
        server.stop()


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server-log-level",
        default="info",
        help="log level of the server started (default %(default)s, as deployed)",
    )
    parser.add_argument(
        "--server-workers",
        type=int,
        default=1,
        help="`hpsearch serve --workers`: server processes (default %(default)s)",
    )
    parser.add_argument(
        "--code",
        type=Path,
        default=REPO,
        help="checkout whose service/ the server runs (default: this one); "
        "for measuring a change on a copy",
    )


@contextlib.contextmanager
def server_for(args: argparse.Namespace, storage_url: str, folder: Path) -> Iterator[ServerProcess]:
    """The server the flags of add_server_flags describe."""
    with running_server(
        storage_url,
        folder,
        args.server_log_level,
        ["--workers", str(args.server_workers)],
        args.code.resolve(),
    ) as server:
        yield server


def study_spec(name: str, n_trials: int = 100_000, epochs: int = EPOCHS) -> dict[str, Any]:
    """TPE + median pruner over sgd_steplr_warmup; no baseline trial (raw Optuna has none)."""
    return {
        "name": name,
        "model": {"arch": "resnet18", "weights": None},
        "data": {"kind": "digits", "image_size": 16, "batch_size": 64},
        "training": {"epochs": epochs, "seed": 0},
        "search_space": SPACE,
        "sampler": {"name": "tpe", **TPE_OPTIONS},
        "pruner": {"name": "median", **MEDIAN_OPTIONS},
        "n_trials": n_trials,
        "baseline": False,
    }


def create_study(base_url: str, spec: dict[str, Any], token: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=base_url, timeout=60, headers=headers) as http:
        r = http.post(f"{API}/studies", json=spec)
    if r.status_code != 201:
        raise RuntimeError(f"creating the study failed: {r.status_code} {r.text}")


def synthetic_loss(params: dict[str, Any], epoch: int) -> float:
    """A validation loss that depends on every hyperparameter and falls with the epoch."""
    floor = (
        (math.log10(params["lr"]) + 1.5) ** 2
        + 4 * (params["momentum"] - 0.9) ** 2
        + 0.01 * (params["step_size"] - 4) ** 2
        + (params["gamma"] - 0.2) ** 2
        + 0.05 * params["warmup_epochs"]
    )
    return 0.1 + floor + 1.0 / (epoch + 1)


# --- client processes ------------------------------------------------------------------------
@dataclass
class ClientResult:
    """What one client process did: trials finished, per-call latencies (seconds), HTTP statuses
    and transport or storage errors."""

    trials: int = 0
    pruned: int = 0
    started: float = 0.0
    ended: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    error_sample: str | None = None

    def timed(self, kind: str, seconds: float) -> None:
        self.latencies.setdefault(kind, []).append(seconds)

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.error_sample = self.error_sample or f"{type(exc).__name__}: {exc}"[:300]


def _client_main(
    target: Callable[[Any, Any], ClientResult], config: Any, barrier: Any, results: Any
) -> None:
    try:
        results.put(target(config, barrier))
    except BaseException as exc:  # report it instead of leaving the parent waiting
        barrier.abort()
        result = ClientResult()
        result.failed(exc)
        results.put(result)


def run_clients(
    target: Callable[[Any, Any], ClientResult],
    configs: Sequence[Any],
    setup_timeout: float,
    run_timeout: float,
) -> list[ClientResult]:
    """Run `target(config, barrier)` in one process per config. Each target connects, waits on
    the barrier, then runs; the processes are forked from a server that has already imported
    the clients' modules, so 32 of them start in seconds on two cores."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["bench.clients"])
    barrier = ctx.Barrier(len(configs) + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_client_main, args=(target, c, barrier, results), daemon=True)
        for c in configs
    ]
    for p in procs:
        p.start()
    out: list[ClientResult] = []
    try:
        barrier.wait(timeout=setup_timeout)
        deadline = time.monotonic() + run_timeout
        while len(out) < len(procs):
            out.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
    except (queue.Empty, threading.BrokenBarrierError) as exc:
        raise RuntimeError(
            f"clients did not finish: {type(exc).__name__} ({len(out)} of {len(procs)} reported)"
        ) from exc
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    return out


# --- statistics ------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def median_spread(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    """'median [min-max]' of repeated measurements."""
    if not values:
        return "-"
    return f"{fmt.format(median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def merged(results: Sequence[ClientResult], kind: str) -> list[float]:
    return [s for r in results for s in r.latencies.get(kind, [])]


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table, so the output can be pasted into RESULTS.md as is."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.node()}: {os.cpu_count()} cores, load average "
        f"{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, Python {platform.python_version()}; "
        f"code {code_state(REPO)}"
    )


def code_state(checkout: Path) -> str:
    """The commit of a checkout and whether its service/ differs from it: results are only
    comparable for the same server code."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(checkout), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "service")
    return f"{commit}{' + uncommitted service/ changes' if dirty else ''}"

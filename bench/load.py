"""Load: K scripted workers at full speed (claim, one report per epoch, complete; no training,
no pauses) against a server on loopback for a fixed time. Prints requests/s, p50/p99 latency of
claim, report and complete, the HTTP statuses seen, and last the count of 5xx, which must be
0: the exit status is 1 when any request got a 5xx or no answer at all.

By default it starts its own `hpsearch serve` on a fresh SQLite file (or PostgreSQL database);
--server points it at a running one on 127.0.0.1 instead (a new study is created there).
Run from the repository root:

    .venv/bin/python -m bench.load --workers 8 --duration 60
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse

from bench.clients import HttpClientConfig, http_client
from bench.harness import (
    ClientResult,
    add_server_flags,
    create_study,
    fresh_storage,
    machine,
    merged,
    ms,
    percentile,
    run_clients,
    server_for,
    study_spec,
    table,
)
from bench.profiling import MODES, py_spy, summarize

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CALLS = ("claim", "report", "complete")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load",
        description="K scripted workers at full speed for a fixed time; fails on any 5xx",
    )
    parser.add_argument("--workers", type=int, default=8, help="K (default %(default)s)")
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds of load (default %(default)s)"
    )
    parser.add_argument(
        "--epochs", type=int, default=5, help="reports per trial (default %(default)s)"
    )
    parser.add_argument(
        "--storage",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="storage of the server this script starts (default %(default)s)",
    )
    parser.add_argument("--server", help="use this running server (loopback only) instead")
    parser.add_argument("--token", help="worker/admin token when --server has tokens on")
    add_server_flags(parser)
    parser.add_argument(
        "--profile",
        type=Path,
        help="record the server (own server only) with py-spy into this file",
    )
    parser.add_argument(
        "--profile-mode",
        choices=sorted(MODES),
        default="active",
        help="py-spy sampling: active threads, the GIL holder, or all (wall)",
    )
    parser.add_argument("--py-spy", help="py-spy binary (default: on PATH or /tmp/tools/bin)")
    args = parser.parse_args(argv)
    if args.server and urlparse(args.server).hostname not in LOOPBACK:
        parser.error("--server must be on loopback (127.0.0.1 or localhost)")
    if args.workers < 1 or args.duration <= 0:
        parser.error("--workers and --duration must be positive")
    return args


@contextlib.contextmanager
def target_server(args: argparse.Namespace, folder: Path) -> Iterator[tuple[str, int | None]]:
    """The server's URL and, when this script started it, its pid."""
    if args.server:
        yield args.server.rstrip("/"), None
        return
    with fresh_storage(args.storage, folder) as url, server_for(args, url, folder) as server:
        yield server.url, server.process.pid


def run_load(args: argparse.Namespace, base_url: str, pid: int | None) -> list[ClientResult]:
    study = f"load-{uuid.uuid4().hex[:8]}"
    create_study(base_url, study_spec(study, epochs=args.epochs), args.token)
    configs = [
        HttpClientConfig(
            base_url, study, f"load-{i}", 10**9, args.duration, epochs=args.epochs, token=args.token
        )
        for i in range(args.workers)
    ]
    if args.profile is None or pid is None:
        return run_clients(http_client, configs, setup_timeout=180, run_timeout=args.duration + 90)
    with py_spy(pid, args.profile, args.py_spy, args.profile_mode) as out:
        results = run_clients(
            http_client, configs, setup_timeout=180, run_timeout=args.duration + 90
        )
    print(summarize(out) if out else "py-spy not found: no profile", flush=True)
    return results


def report(args: argparse.Namespace, results: list[ClientResult]) -> int:
    elapsed = max(r.ended for r in results) - min(r.started for r in results)
    statuses: dict[int, int] = {}
    for r in results:
        for code, n in r.statuses.items():
            statuses[code] = statuses.get(code, 0) + n
    requests = sum(statuses.values())
    errors = sum(r.errors for r in results)
    server_errors = sum(n for code, n in statuses.items() if code >= 500)
    rows = [
        [
            kind,
            len(merged(results, kind)),
            ms(percentile(merged(results, kind), 50)),
            ms(percentile(merged(results, kind), 99)),
        ]
        for kind in CALLS
    ]
    print(table(["call", "requests", "p50 ms", "p99 ms"], rows))
    trials = sum(r.trials for r in results)
    print(
        f"\n{args.workers} workers, {elapsed:.1f} s: {requests} requests "
        f"({requests / elapsed:.1f}/s), {trials} trials finished "
        f"({sum(r.pruned for r in results)} pruned)"
    )
    print("statuses: " + ", ".join(f"{c}: {n}" for c, n in sorted(statuses.items())))
    sample = next((r.error_sample for r in results if r.error_sample), None)
    if errors:
        print(f"requests without an answer: {errors} (e.g. {sample})")
    print(f"# after: {machine()}")
    claim, rep = merged(results, "claim"), merged(results, "report")
    ok = server_errors == 0 and errors == 0
    print(
        f"load: {requests / elapsed:.1f} requests/s; claim p50/p99 "
        f"{ms(percentile(claim, 50))}/{ms(percentile(claim, 99))} ms; report p50/p99 "
        f"{ms(percentile(rep, 50))}/{ms(percentile(rep, 99))} ms; 5xx: {server_errors}; "
        f"no answer: {errors} -> {'OK' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(f"# load on {machine()}", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="hpsearch-load-") as tmp,
        target_server(args, Path(tmp)) as (base_url, pid),
    ):
        print(
            f"# {args.workers} workers for {args.duration:.0f} s against {base_url}"
            f"{'' if args.server else f' ({args.storage})'}",
            flush=True,
        )
        results = run_load(args, base_url, pid)
    return report(args, results)


if __name__ == "__main__":
    raise SystemExit(main())

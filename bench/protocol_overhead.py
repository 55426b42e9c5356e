"""Protocol overhead: the hpsearch service against raw Optuna on the same kind of storage.

Service: a real `hpsearch serve` subprocess; N scripted HTTP workers (separate processes, each
with its own httpx client) claim, report five epochs (stopping when pruned) and complete.
Raw: N processes, each with its own RDBStorage, calling study.ask(fixed distributions),
trial.report + trial.should_prune, study.tell. TPE and the median pruner with the same options
on both sides, the sgd_steplr_warmup space, a synthetic loss; a fresh database for every run.

Each cell runs a fixed number of trials in total (split over the clients) or stops at a time
limit, whichever comes first. Service and raw runs alternate (their order flips every repeat).
Prints trials/s with median [min-max] over repeats, p50/p99 per call kind, and last the
service/raw ratio line. Run from the repository root:

    .venv/bin/python -m bench.protocol_overhead
"""

from __future__ import annotations

import argparse
import itertools
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.clients import HttpClientConfig, RawClientConfig, http_client, raw_client
from bench.harness import (
    BACKENDS,
    ClientResult,
    add_server_flags,
    create_study,
    fresh_storage,
    machine,
    median,
    median_spread,
    merged,
    ms,
    percentile,
    pg_counters,
    raw_pruner,
    raw_sampler,
    raw_storage,
    run_clients,
    server_for,
    study_spec,
    table,
)

STUDY = "overhead"
HTTP_CALLS = ("claim", "report", "complete")
CALLS = {"service": HTTP_CALLS, "variant": HTTP_CALLS, "raw": ("ask", "report", "tell")}
TARGET_CLIENTS = (8, 32)
DB_COLUMNS = {
    "transactions/trial": ("xact_commit", "xact_rollback"),
    "rows scanned/trial": ("tup_returned",),
    "rows fetched/trial": ("tup_fetched",),
    "rows written/trial": ("tup_inserted", "tup_updated", "tup_deleted"),
}
Outcome = tuple[list[ClientResult], dict[str, int] | None]


@dataclass(frozen=True)
class Cell:
    mode: str  # "service", "variant" or "raw"
    backend: str
    clients: int
    repeat: int
    results: list[ClientResult]
    db: dict[str, int] | None  # PostgreSQL's counters for the cell's database

    def per_trial(self, *counters: str) -> float:
        if not self.db or not self.trials:
            return float("nan")
        return sum(self.db[c] for c in counters) / self.trials

    @property
    def trials(self) -> int:
        return sum(r.trials for r in self.results)

    @property
    def elapsed(self) -> float:
        return max(r.ended for r in self.results) - min(r.started for r in self.results)

    @property
    def rate(self) -> float:
        return self.trials / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def problems(self) -> str:
        errors = sum(r.errors for r in self.results)
        bad = sum(
            n for r in self.results for code, n in r.statuses.items() if code >= 300 and code != 204
        )
        sample = next((r.error_sample for r in self.results if r.error_sample), None)
        return "" if not (errors or bad) else f"{errors} errors, {bad} non-2xx ({sample})"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.protocol_overhead",
        description="trials/s of the hpsearch service against raw Optuna, side by side "
        "(the defaults take about 8 minutes on 2 cores)",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated: sqlite,postgresql (default %(default)s)",
    )
    parser.add_argument(
        "--clients", default="1,8,32", help="comma-separated client counts (default %(default)s)"
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=192,
        help="trials per cell, split over its clients (default %(default)s)",
    )
    parser.add_argument(
        "--max-seconds", type=float, default=10.0, help="time limit per cell (default %(default)s)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="runs of each cell, service and raw interleaved (default %(default)s)",
    )
    parser.add_argument(
        "--variant",
        type=Path,
        help="a second checkout (a copy with a change to service/): its server "
        "runs as a third side, interleaved with the other two",
    )
    add_server_flags(parser)
    return parser.parse_args(argv)


def run_service(backend: str, clients: int, args: argparse.Namespace, folder: Path) -> Outcome:
    with fresh_storage(backend, folder) as url:
        with server_for(args, url, folder) as server:
            results = _drive(server.url, clients, args)
        return results, pg_counters(url)


def run_variant(backend: str, clients: int, args: argparse.Namespace, folder: Path) -> Outcome:
    variant = argparse.Namespace(**{**vars(args), "code": args.variant})
    with fresh_storage(backend, folder) as url:
        with server_for(variant, url, folder) as server:
            results = _drive(server.url, clients, args)
        return results, pg_counters(url)


def _drive(base_url: str, clients: int, args: argparse.Namespace) -> list[ClientResult]:
    """Create the study on a running server and run the scripted HTTP workers against it."""
    create_study(base_url, study_spec(STUDY))
    configs = [
        HttpClientConfig(
            base_url, STUDY, f"bench-{i}", _share(args.trials, clients, i), args.max_seconds
        )
        for i in range(clients)
    ]
    return run_clients(http_client, configs, setup_timeout=180, run_timeout=args.max_seconds + 90)


def run_raw(backend: str, clients: int, args: argparse.Namespace, folder: Path) -> Outcome:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with fresh_storage(backend, folder) as url:
        storage = raw_storage(url)
        optuna.create_study(
            storage=storage,
            study_name=STUDY,
            direction="minimize",
            sampler=raw_sampler(),
            pruner=raw_pruner(),
        )
        storage.engine.dispose()
        configs = [
            RawClientConfig(url, STUDY, _share(args.trials, clients, i), args.max_seconds)
            for i in range(clients)
        ]
        results = run_clients(
            raw_client, configs, setup_timeout=180, run_timeout=args.max_seconds + 90
        )
        return results, pg_counters(url)


def _share(total: int, clients: int, index: int) -> int:
    """Client `index`'s part of `total` trials."""
    return total // clients + (1 if index < total % clients else 0)


RUNS = {"service": run_service, "variant": run_variant, "raw": run_raw}


def _order(repeat: int, variant: bool) -> list[str]:
    """Each side first in turn, so slow drifts of the machine's load hit every side alike."""
    sides = ["service", "raw"] + (["variant"] if variant else [])
    shift = repeat % len(sides)
    return sides[shift:] + sides[:shift]


def run_cells(args: argparse.Namespace) -> list[Cell]:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    counts = [int(c) for c in args.clients.split(",") if c.strip()]
    cells = []
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-") as tmp:
        for backend, clients, repeat in itertools.product(backends, counts, range(args.repeats)):
            for mode in _order(repeat, args.variant is not None):
                run = RUNS[mode]
                cell = Cell(mode, backend, clients, repeat, *run(backend, clients, args, Path(tmp)))
                cells.append(cell)
                print(
                    f"  {backend:10} {clients:3} clients  {mode:7} run {repeat + 1}: "
                    f"{cell.trials} trials in {cell.elapsed:.1f} s = {cell.rate:.1f}/s"
                    f"{'  ' + cell.problems if cell.problems else ''}",
                    flush=True,
                )
    return cells


def _group(cells: list[Cell], mode: str, backend: str, clients: int) -> list[Cell]:
    return [c for c in cells if (c.mode, c.backend, c.clients) == (mode, backend, clients)]


def _ratio(cells: list[Cell], backend: str, clients: int, side: str = "service") -> float:
    rate = median([c.rate for c in _group(cells, side, backend, clients)])
    raw = median([c.rate for c in _group(cells, "raw", backend, clients)])
    return rate / raw if raw else float("nan")


def _keys(cells: list[Cell]) -> list[tuple[str, int]]:
    return list(dict.fromkeys((c.backend, c.clients) for c in cells))


def _sides(cells: list[Cell]) -> list[str]:
    return [m for m in ("service", "raw", "variant") if any(c.mode == m for c in cells)]


def throughput_table(cells: list[Cell]) -> str:
    sides, http_sides = _sides(cells), [m for m in _sides(cells) if m != "raw"]
    rows = []
    for backend, clients in _keys(cells):
        row: list[object] = [backend, clients]
        row += [median_spread([c.rate for c in _group(cells, m, backend, clients)]) for m in sides]
        raw = _group(cells, "raw", backend, clients)
        for side in http_sides:
            paired = [
                s.rate / r.rate
                for s, r in zip(_group(cells, side, backend, clients), raw, strict=False)
                if r.rate
            ]
            row += [f"{_ratio(cells, backend, clients, side):.2f}", median_spread(paired, "{:.2f}")]
        rows.append(row)
    header = ["storage", "clients"] + [f"{m} trials/s" for m in sides]
    for side in http_sides:
        header += [f"{side}/raw (medians)", f"{side}/raw per repeat"]
    return table(header, rows)


def latency_table(cells: list[Cell]) -> str:
    rows = []
    for backend, clients in _keys(cells):
        for mode in _sides(cells):
            results = [r for c in _group(cells, mode, backend, clients) for r in c.results]
            row: list[object] = [backend, clients, mode]
            for kind in CALLS[mode]:
                samples = merged(results, kind)
                row.append(f"{kind} {ms(percentile(samples, 50))} / {ms(percentile(samples, 99))}")
            rows.append(row)
    return table(
        [
            "storage",
            "clients",
            "side",
            "call p50 / p99 ms",
            "call p50 / p99 ms",
            "call p50 / p99 ms",
        ],
        rows,
    )


def database_table(cells: list[Cell]) -> str | None:
    """Database work per finished trial (PostgreSQL only): independent of the machine's load."""
    rows = []
    for backend, clients in _keys(cells):
        for mode in _sides(cells):
            group = [c for c in _group(cells, mode, backend, clients) if c.db]
            if not group:
                continue
            row: list[object] = [backend, clients, mode]
            for counters in DB_COLUMNS.values():
                row.append(f"{median([c.per_trial(*counters) for c in group]):.1f}")
            rows.append(row)
    if not rows:
        return None
    return table(["storage", "clients", "side", *DB_COLUMNS], rows)


def ratio_line(cells: list[Cell], side: str = "service") -> str:
    parts = [
        f"{backend} {clients}: {_ratio(cells, backend, clients, side):.2f}x"
        for backend, clients in _keys(cells)
    ]
    targeted = [_ratio(cells, b, n, side) for b, n in _keys(cells) if n in TARGET_CLIENTS]
    verdict = "not measured" if not targeted else "met" if min(targeted) >= 1.0 else "NOT met"
    return (
        f"ratio {side}/raw trials/s: {'; '.join(parts)} "
        f"(target >= 1.0x at {' and '.join(map(str, TARGET_CLIENTS))} clients: {verdict})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(f"# protocol overhead on {machine()}", flush=True)
    cells = run_cells(args)
    print("\n" + throughput_table(cells) + "\n")
    print(latency_table(cells) + "\n")
    database = database_table(cells)
    if database:
        print(database + "\n")
    print(f"# after: {machine()}")
    if args.variant is not None:
        print(ratio_line(cells, "variant"))
    print(ratio_line(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

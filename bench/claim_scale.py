"""Scale: claim latency (TPE) with 1,000 and 5,000 finished trials in a study.

A real `hpsearch serve` on a fresh storage; the study is created through the API, then filled
with finished trials directly through Optuna's add_trials on the same storage (80% complete
after five epochs, 20% pruned after one to three, random params, the synthetic loss). At each
size one HTTP client claims and at once completes `--samples` trials, one after another (after
`--warmup` unrecorded ones that let the server's cache read the new trials). Side by side, after
each claim, a raw Optuna study on the same storage (this process, warm cache) asks and tells
one trial: the floor that TPE itself costs at that size. Prints p50/p99 per size and last the
result against the target (claim p50 < 100 ms at 1,000). Run from the repository root:

    .venv/bin/python -m bench.claim_scale
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import optuna
from optuna.trial import TrialState

from bench.harness import (
    API,
    EPOCHS,
    add_server_flags,
    create_study,
    distributions,
    fresh_storage,
    machine,
    ms,
    percentile,
    raw_pruner,
    raw_sampler,
    raw_storage,
    server_for,
    study_spec,
    synthetic_loss,
    table,
)
from bench.profiling import MODES, py_spy, summarize

STUDY = "scale"
TARGET_SIZE, TARGET_P50_S = 1000, 0.100


@dataclass(frozen=True)
class Row:
    backend: str
    size: int
    fill_s: float
    claim: list[float]
    complete: list[float]
    ask: list[float]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.claim_scale",
        description="claim latency (TPE) with many finished trials in a study",
    )
    parser.add_argument(
        "--backends",
        default="sqlite",
        help="comma-separated: sqlite,postgresql (default %(default)s; filling "
        "5,000 trials takes about 4 minutes per backend on 2 busy cores)",
    )
    parser.add_argument(
        "--sizes",
        default="1000,5000",
        help="finished trials before measuring (default %(default)s)",
    )
    parser.add_argument(
        "--samples", type=int, default=40, help="claims measured at each size (default %(default)s)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="unrecorded claims first at each size (default %(default)s)",
    )
    parser.add_argument(
        "--profile", type=Path, help="folder: record the server with py-spy while measuring"
    )
    parser.add_argument(
        "--profile-mode",
        choices=sorted(MODES),
        default="active",
        help="py-spy sampling: active threads, the GIL holder, or all (wall)",
    )
    parser.add_argument("--py-spy", help="py-spy binary (default: on PATH or /tmp/tools/bin)")
    add_server_flags(parser)
    return parser.parse_args(argv)


# --- filling the study -----------------------------------------------------------------------
def finished_trial(rng: random.Random, dists: dict[str, Any]) -> optuna.trial.FrozenTrial:
    params = {name: _draw(rng, d) for name, d in dists.items()}
    pruned = rng.random() < 0.2
    epochs = rng.randint(2, 4) if pruned else EPOCHS
    curve = {e: synthetic_loss(params, e) * rng.uniform(0.9, 1.1) for e in range(epochs)}
    return optuna.trial.create_trial(
        params=params,
        distributions=dists,
        intermediate_values=curve,
        state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
        value=None if pruned else curve[epochs - 1],
    )


def _draw(rng: random.Random, dist: Any) -> Any:
    if isinstance(dist, optuna.distributions.IntDistribution):
        return rng.randint(dist.low, dist.high)
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return rng.choice(dist.choices)
    if dist.log:
        return 10 ** rng.uniform(math.log10(dist.low), math.log10(dist.high))
    return rng.uniform(dist.low, dist.high)


def fill(study: optuna.Study, count: int, seed: int) -> float:
    """Add `count` finished trials; returns the seconds it took."""
    rng, dists = random.Random(seed), distributions()
    start = time.perf_counter()
    study.add_trials([finished_trial(rng, dists) for _ in range(count)])
    return time.perf_counter() - start


# --- measuring -------------------------------------------------------------------------------
def _timed_post(http: httpx.Client, path: str, body: dict[str, Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    r = http.post(path, json=body)
    elapsed = time.perf_counter() - start
    if r.status_code != 200:
        raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:300]}")
    return elapsed, r.json()


def claim_and_complete(http: httpx.Client) -> tuple[float, float]:
    claim_s, trial = _timed_post(
        http, f"{API}/trials/claim", {"worker_id": "scale", "study": STUDY}
    )
    complete_s, _ = _timed_post(
        http,
        f"{API}/trials/{trial['trial_id']}/complete",
        {"val_loss": synthetic_loss(trial["params"], EPOCHS - 1)},
    )
    return claim_s, complete_s


def ask_and_tell(study: optuna.Study, dists: dict[str, Any]) -> float:
    start = time.perf_counter()
    trial = study.ask(fixed_distributions=dists)
    elapsed = time.perf_counter() - start
    study.tell(trial, synthetic_loss(trial.params, EPOCHS - 1))
    return elapsed


def measure(
    http: httpx.Client,
    study: optuna.Study,
    args: argparse.Namespace,
) -> tuple[list[float], list[float], list[float]]:
    dists = distributions()
    claims, completes, asks = [], [], []
    for i in range(args.warmup + args.samples):
        claim_s, complete_s = claim_and_complete(http)
        ask_s = ask_and_tell(study, dists)
        if i >= args.warmup:
            claims.append(claim_s)
            completes.append(complete_s)
            asks.append(ask_s)
    return claims, completes, asks


def run_backend(backend: str, args: argparse.Namespace, folder: Path) -> list[Row]:
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    rows = []
    with (
        fresh_storage(backend, folder) as url,
        server_for(args, url, folder) as server,
        httpx.Client(base_url=server.url, timeout=120) as http,
    ):
        create_study(server.url, study_spec(STUDY))
        study = optuna.load_study(
            study_name=STUDY, storage=raw_storage(url), sampler=raw_sampler(), pruner=raw_pruner()
        )
        for size in sizes:
            fill_s = fill(study, max(0, size - len(study.get_trials(deepcopy=False))), size)
            print(f"  {backend}: {size} finished trials (filled in {fill_s:.0f} s)", flush=True)
            if args.profile is None:
                claims, completes, asks = measure(http, study, args)
            else:
                args.profile.mkdir(parents=True, exist_ok=True)
                out = args.profile / f"claim-{backend}-{size}.txt"
                with py_spy(server.process.pid, out, args.py_spy, args.profile_mode) as recorded:
                    claims, completes, asks = measure(http, study, args)
                print(summarize(recorded, top=15) if recorded else "py-spy not found", flush=True)
            rows.append(Row(backend, size, fill_s, claims, completes, asks))
    return rows


def result_line(rows: list[Row]) -> str:
    parts = []
    for r in rows:
        p50 = percentile(r.claim, 50)
        parts.append(
            f"{r.backend} {r.size}: claim p50 {ms(p50)} ms "
            f"({p50 / percentile(r.ask, 50):.1f}x raw ask)"
        )
    at_target = [percentile(r.claim, 50) for r in rows if r.size == TARGET_SIZE]
    verdict = (
        "not measured" if not at_target else "met" if max(at_target) < TARGET_P50_S else "NOT met"
    )
    return (
        f"claim scale: {'; '.join(parts)} (target p50 < {TARGET_P50_S * 1000:.0f} ms at "
        f"{TARGET_SIZE}: {verdict})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"# claim scale on {machine()}", flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="hpsearch-scale-") as tmp:
        for backend in (b.strip() for b in args.backends.split(",") if b.strip()):
            rows += run_backend(backend, args, Path(tmp))
    print(
        "\n"
        + table(
            [
                "storage",
                "finished trials",
                "claim p50 / p99 ms",
                "complete p50 / p99 ms",
                "raw ask p50 / p99 ms",
                "claim / raw ask (p50)",
            ],
            [
                [
                    r.backend,
                    r.size,
                    f"{ms(percentile(r.claim, 50))} / {ms(percentile(r.claim, 99))}",
                    f"{ms(percentile(r.complete, 50))} / {ms(percentile(r.complete, 99))}",
                    f"{ms(percentile(r.ask, 50))} / {ms(percentile(r.ask, 99))}",
                    f"{percentile(r.claim, 50) / percentile(r.ask, 50):.2f}",
                ]
                for r in rows
            ],
        )
        + "\n"
    )
    print(f"# after: {machine()}")
    print(result_line(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

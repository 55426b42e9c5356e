"""Scale with history: costs that must stay flat as finished studies pile up (issue 10).

1. Claim p50 (a claim without a study, then its completion) and `GET /api/v1/studies?limit=50`
   p50, with 1 and with `--finished` (200) finished studies of `--trials` (100) trials each,
   beside one live study that takes the claims. Target: both ratios (many / one) <= 1.2.
2. The idle server's CPU over `--idle-s` (30) seconds with `--idle-trials` (100,000) finished
   trials in the database, as 100-trial studies. Target: < 2 % of one core.

The history is written before the server starts, straight into Optuna's tables: each study with
Optuna's create_study and the attrs hpsearch stores (the spec, the space), its trials with bulk
SQL inserts (complete, a value and the five params each; far faster than add_trials). The
server then finds studies it did not create, as after an upgrade. The live study is created
through the API. Run from the repository root:

    .venv/bin/python -m bench.study_scale
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import optuna
from optuna.storages._rdb import models

from bench.claim_scale import _draw
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
    raw_storage,
    server_for,
    study_spec,
    synthetic_loss,
    table,
)

LIVE = "live"
TARGET_RATIO, TARGET_IDLE_CORE = 1.2, 0.02


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.study_scale", description=__doc__)
    parser.add_argument("--backend", default="sqlite", help="sqlite or postgresql")
    parser.add_argument(
        "--finished",
        default="1,50,200",
        help="finished studies of each server measured side by side; the "
        "target compares the last with the first (default %(default)s: 50 "
        "fills a page as 200 does, so 200/50 is the history alone)",
    )
    parser.add_argument("--trials", type=int, default=100, help="trials per finished study")
    parser.add_argument("--samples", type=int, default=60, help="claims and lists measured")
    parser.add_argument("--warmup", type=int, default=5, help="unrecorded claims first")
    parser.add_argument(
        "--idle-trials",
        type=int,
        default=100_000,
        help="finished trials for the idle measurement (0: skip it)",
    )
    parser.add_argument("--idle-s", type=float, default=30.0, help="idle seconds measured")
    add_server_flags(parser)
    return parser.parse_args(argv)


# --- history ---------------------------------------------------------------------------------
def write_history(url: str, studies: int, trials: int, seed: int = 0) -> float:
    """`studies` finished hpsearch studies of `trials` complete trials; returns seconds."""
    from service.search_space import load_named_space
    from service.settings import DEFAULT_SEARCH_SPACES
    from service.spec import StudySpec

    start = time.perf_counter()
    storage = raw_storage(url)
    space = load_named_space("sgd_steplr_warmup", DEFAULT_SEARCH_SPACES).model_dump(mode="json")
    dists = distributions()
    rng = random.Random(seed)
    trial_t = models.TrialModel.__table__
    value_t = models.TrialValueModel.__table__
    param_t = models.TrialParamModel.__table__
    now = dt.datetime.now()
    for k in range(studies):
        name = f"history-{k:05d}"
        spec = StudySpec.model_validate(study_spec(name, n_trials=trials)).model_dump(mode="json")
        study = optuna.create_study(storage=storage, study_name=name)
        study.set_user_attr("spec", spec)
        study.set_user_attr("search_space", space)
        study.set_user_attr("created_at", now.isoformat())
        study_id = study._study_id
        rows = [
            {
                "number": n,
                "study_id": study_id,
                "state": "COMPLETE",
                "datetime_start": now,
                "datetime_complete": now,
            }
            for n in range(trials)
        ]
        with storage.engine.begin() as conn:
            ids = (
                conn.execute(
                    trial_t.insert().returning(trial_t.c.trial_id, sort_by_parameter_order=True),
                    rows,
                )
                .scalars()
                .all()
            )
            values, params = [], []
            for trial_id in ids:
                drawn = {p: _draw(rng, d) for p, d in dists.items()}
                values.append(
                    {
                        "trial_id": trial_id,
                        "objective": 0,
                        "value_type": "FINITE",
                        "value": synthetic_loss(drawn, EPOCHS - 1),
                    }
                )
                params += [
                    {
                        "trial_id": trial_id,
                        "param_name": p,
                        "param_value": dists[p].to_internal_repr(v),
                        "distribution_json": optuna.distributions.distribution_to_json(dists[p]),
                    }
                    for p, v in drawn.items()
                ]
            conn.execute(value_t.insert(), values)
            conn.execute(param_t.insert(), params)
    storage.engine.dispose()
    return time.perf_counter() - start


# --- measuring -------------------------------------------------------------------------------
def claim_once(http: httpx.Client) -> float:
    """A claim without a study (timed), then its completion."""
    start = time.perf_counter()
    r = http.post(f"{API}/trials/claim", json={"worker_id": "bench"})
    elapsed = time.perf_counter() - start
    if r.status_code != 200 or r.json()["study"] != LIVE:
        raise RuntimeError(f"claim: {r.status_code} {r.text[:300]}")
    trial = r.json()
    http.post(
        f"{API}/trials/{trial['trial_id']}/complete",
        json={"val_loss": synthetic_loss(trial["params"], EPOCHS - 1)},
    ).raise_for_status()
    return elapsed


def list_once(http: httpx.Client) -> float:
    start = time.perf_counter()
    r = http.get(f"{API}/studies", params={"limit": 50})
    elapsed = time.perf_counter() - start
    r.raise_for_status()
    return elapsed


def measure(
    https: list[httpx.Client],
    samples: int,
    warmup: int,
) -> list[tuple[list[float], list[float]]]:
    """Claims and lists on every server in turn, so that the load other programs put on the
    machine falls on each alike; per server, (claim seconds, list seconds)."""
    out: list[tuple[list[float], list[float]]] = [([], []) for _ in https]
    for http in https:
        list_once(http)  # the first marks the finished studies done
    for i in range(warmup + samples):
        for http, (claims, lists) in zip(https, out, strict=True):
            claim_s, list_s = claim_once(http), list_once(http)
            if i >= warmup:
                claims.append(claim_s)
                lists.append(list_s)
    return out


def compare(args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    """One server per `--finished` count of finished studies, measured side by side."""
    sizes = [int(n) for n in args.finished.split(",")]
    with contextlib.ExitStack() as stack:
        https = []
        for finished in sizes:
            url = stack.enter_context(fresh_storage(args.backend, folder))
            fill_s = write_history(url, finished, args.trials)
            print(
                f"  {finished} finished studies of {args.trials} trials written in {fill_s:.0f} s",
                flush=True,
            )
            server = stack.enter_context(server_for(args, url, folder))
            spec = study_spec(LIVE)
            spec["sampler"] = {"name": "random", "seed": 0}  # the history, not TPE, is measured
            create_study(server.url, spec)
            https.append(stack.enter_context(httpx.Client(base_url=server.url, timeout=120)))
        measured = measure(https, args.samples, args.warmup)
    return [
        {"finished": n, "claims": c, "lists": ls}
        for n, (c, ls) in zip(sizes, measured, strict=True)
    ]


def _cpu_s(group: int) -> float:
    """CPU seconds (user + system) of every process in the process group `group`."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # pgrp
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def idle(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    studies = max(1, args.idle_trials // args.trials)
    with fresh_storage(args.backend, folder) as url:
        fill_s = write_history(url, studies, args.trials, seed=1)
        started = time.perf_counter()
        with server_for(args, url, folder) as server:
            ready_s = time.perf_counter() - started
            time.sleep(5)  # past start-up
            group = server.process.pid  # its own session: the group is the server's
            before = _cpu_s(group)
            time.sleep(args.idle_s)
            used = _cpu_s(group) - before
    share = used / args.idle_s
    print(
        f"  idle: {studies * args.trials} finished trials in {studies} studies (written in "
        f"{fill_s:.0f} s; the server was ready in {ready_s:.1f} s): {used:.2f} CPU s in "
        f"{args.idle_s:.0f} s = {100 * share:.2f} % of a core",
        flush=True,
    )
    return {"trials": studies * args.trials, "cpu_s": used, "share": share, "ready_s": ready_s}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"# study scale on {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="hpsearch-studies-") as tmp:
        measured = compare(args, Path(tmp))
        quiet = idle(args, Path(tmp)) if args.idle_trials else None
    rows = [
        [
            r["finished"],
            f"{ms(percentile(r['claims'], 50))} / {ms(percentile(r['claims'], 99))}",
            f"{ms(percentile(r['lists'], 50))} / {ms(percentile(r['lists'], 99))}",
        ]
        for r in measured
    ]
    print(
        "\n"
        + table(["finished studies", "claim p50 / p99 ms", "list?limit=50 p50 / p99 ms"], rows)
        + "\n"
    )
    first, last = measured[0], measured[-1]
    claim_ratio = percentile(last["claims"], 50) / percentile(first["claims"], 50)
    list_ratio = percentile(last["lists"], 50) / percentile(first["lists"], 50)
    verdicts = [
        f"{last['finished']}/{first['finished']} finished studies: claim p50 ratio "
        f"{claim_ratio:.2f}, list p50 ratio {list_ratio:.2f}",
        f"(target <= {TARGET_RATIO}: "
        f"{'met' if max(claim_ratio, list_ratio) <= TARGET_RATIO else 'NOT met'})",
    ]
    if len(measured) > 2:  # the same page size: the history alone
        middle = measured[-2]
        claims = percentile(last["claims"], 50) / percentile(middle["claims"], 50)
        lists = percentile(last["lists"], 50) / percentile(middle["lists"], 50)
        verdicts.insert(
            1,
            f"{last['finished']}/{middle['finished']} (pages alike): claim "
            f"{claims:.2f}, list {lists:.2f}",
        )
    if quiet is not None:
        verdicts.append(
            f"idle CPU {100 * quiet['share']:.2f} % of a core with "
            f"{quiet['trials']} finished trials (target < {100 * TARGET_IDLE_CORE:.0f} "
            f"%: {'met' if quiet['share'] < TARGET_IDLE_CORE else 'NOT met'})"
        )
    print(f"# after: {machine()}")
    print("study scale: " + "; ".join(verdicts))
    print(
        json.dumps(
            {"claim_ratio": claim_ratio, "list_ratio": list_ratio, "idle": quiet}, default=str
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`hpsearch demo`: the whole product on one machine, CPU only, no network.

It pretrains a small torchvision model on digits 0-4 (once; the checkpoint is cached), starts
the server on SQLite with the dashboard, submits a study that fine-tunes the model on digits
5-9 over the five core hyperparameters (TPE + median pruner), runs two worker processes, and
prints the best configurations beside the baseline recipe."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from cli import render
from cli.errors import CliError
from cli.readiness import ServerExited, ServerNotReady, wait_until_healthy

logger = logging.getLogger(__name__)


def demo_spec(name: str, weights_path: Path, n_trials: int, epochs: int) -> dict:
    return {
        "name": name,
        "model": {"arch": "resnet18", "weights": None, "weights_path": str(weights_path)},
        "data": {"kind": "digits", "classes": [5, 6, 7, 8, 9], "image_size": 32, "batch_size": 64},
        "training": {"epochs": epochs, "seed": 0},
        "search_space": "sgd_steplr_warmup",
        "sampler": {"name": "tpe", "n_startup_trials": 4, "seed": 0},
        "pruner": {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 1},
        "n_trials": n_trials,
        # The common recipe's StepLR(10) never decays within a short run; that is the point.
        "baseline": {
            "lr": 0.01,
            "momentum": 0.9,
            "step_size": 10,
            "gamma": 0.1,
            "warmup_epochs": 0,
        },
    }


def run(args: argparse.Namespace) -> int:
    from worker.pretrain import pretrain_digits

    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print("1/4 pretraining resnet18 on digits 0-4 (cached after the first run) ...", flush=True)
    weights = pretrain_digits(data_dir / "resnet18-digits0-4.pt")
    print(f"    {weights} ({time.monotonic() - started:.0f} s)", flush=True)

    url = f"http://127.0.0.1:{args.port}"
    env = {**os.environ, "HPSEARCH_HEARTBEAT_INTERVAL": "5"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "--log-level",
            "WARNING",
            "serve",
            "--port",
            str(args.port),
            "--data-dir",
            str(data_dir / "server"),
        ],
        env=env,
    )
    try:
        try:
            wait_until_healthy(url, server)
        except ServerExited:
            raise CliError("the demo server exited at start; see its log above") from None
        except ServerNotReady:
            raise CliError(f"the demo server did not answer at {url}") from None
        name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
        spec = demo_spec(name, weights, args.trials, args.epochs)
        created = httpx.post(f"{url}/api/v1/studies", json=spec, timeout=30)
        if created.status_code != 201:
            raise CliError(f"the server refused the demo study: {created.text}")
        dashboard = created.json()["dashboard_url"]
        print(
            f"2/4 server on {url}; study {name}: {args.trials} trials x {args.epochs} epochs, "
            f"TPE + median pruner\n    dashboard: {dashboard}",
            flush=True,
        )
        print(f"3/4 fine-tuning on digits 5-9 with {args.workers} worker processes ...", flush=True)
        workers = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli.main",
                "worker",
                "--server",
                url,
                "--study",
                name,
                "--processes",
                str(args.workers),
                "--exit-when-idle",
            ],
            env={**env, "HPSEARCH_LOG_LEVEL": "INFO"},
        )
        if workers.returncode != 0:
            raise CliError(f"the workers exited with status {workers.returncode}")
        best = httpx.get(f"{url}/api/v1/studies/{name}/best", params={"k": 5}, timeout=30).json()
        summary = httpx.get(f"{url}/api/v1/studies/{name}", timeout=30).json()
        print(f"4/4 done in {time.monotonic() - started:.0f} s: {summary['counts']}\n", flush=True)
        print(render.best_table(best))
        print(f"\ndashboard: {dashboard}")
        if args.keep_serving:
            print("serving until Ctrl-C ...", flush=True)
            server.wait()
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)
    return 0

"""A short real study on one device: the server (SQLite) and `hpsearch worker` subprocesses,
timed end to end; prints trials/hour and training images/s, for each --trials-per-gpu K.

    python bench/gpu_study.py --device cuda:0 --per-gpu 1 2 4
    python bench/gpu_study.py --device cpu --arch resnet18 --image-size 16 --trials 2 --epochs 1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
if not __package__:  # run as a file (python bench/gpu_study.py): the checkout's modules too
    sys.path.insert(0, str(REPO))

from cli.readiness import wait_until_healthy  # noqa: E402
from tests.servers import free_port  # noqa: E402


def run_study(args: argparse.Namespace, per_gpu: int, folder: Path) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{path}" if path else str(REPO)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "--log-level",
            "WARNING",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(folder / f"server-{per_gpu}"),
        ],
        env=env,
    )
    try:
        wait_until_healthy(url, server, timeout=60)
        name = f"bench-k{per_gpu}"
        spec = {
            "name": name,
            "model": {"arch": args.arch, "weights": None},
            "data": {"kind": "digits", "image_size": args.image_size, "batch_size": args.batch},
            "training": {"epochs": args.epochs, "seed": 0, "checkpoint_every": 0},
            "sampler": {"name": "tpe", "seed": 0},
            "pruner": {"name": "none"},
            "n_trials": args.trials,
        }
        httpx.post(f"{url}/api/v1/studies", json=spec, timeout=30).raise_for_status()
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cli.main",
                "--log-level",
                "WARNING",
                "worker",
                "--server",
                url,
                "--device",
                args.device,
                "--exit-when-idle",
                "--trials-per-gpu",
                str(per_gpu),
            ],
            env=env,
            check=True,
        )
        seconds = time.perf_counter() - start
        trials = httpx.get(f"{url}/api/v1/studies/{name}/trials", timeout=30).json()
        best = httpx.get(f"{url}/api/v1/studies/{name}", timeout=30).json()
    finally:
        server.terminate()
        server.wait(timeout=30)
    epochs = sum(t["epochs"] for t in trials)
    train_images = epochs * round(1797 * 0.8)  # digits, 80 % for training
    return {
        "per_gpu": per_gpu,
        "trials": len(trials),
        "seconds": seconds,
        "trials_per_hour": 3600 * len(trials) / seconds,
        "images_per_s": train_images / seconds,
        "best": best["best"]["val_loss"] if best["best"] else None,
        "baseline": best["baseline"]["val_loss"] if best["baseline"] else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--per-gpu", type=int, nargs="+", default=[1])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_study(args, k, Path(tmp)) for k in args.per_gpu]
    print(
        f"\n{args.arch} on digits at {args.image_size} px, batch {args.batch}, "
        f"{args.trials} trials x {args.epochs} epochs, {args.device}"
    )
    print("trials-per-gpu | trials | wall s | trials/hour | train img/s | best val loss | baseline")
    for r in rows:
        print(
            f"{r['per_gpu']:>14} | {r['trials']:>6} | {r['seconds']:6.1f} | "
            f"{r['trials_per_hour']:11.0f} | {r['images_per_s']:11.0f} | "
            f"{r['best'] or float('nan'):13.4f} | {r['baseline'] or float('nan'):.4f}"
        )
    base = rows[0]["images_per_s"]
    print(
        "images/s ratio vs K=1: "
        + ", ".join(f"K={r['per_gpu']}: {r['images_per_s'] / base:.2f}x" for r in rows)
    )


if __name__ == "__main__":
    main()

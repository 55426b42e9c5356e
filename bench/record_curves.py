"""Record a learning-curve table of the digits transfer task: real fine-tuning curves of a few
hundred configurations of the default search space, every epoch, for bench/asha_replay.py.

    python -m bench.record_curves [--configs 500] [--epochs 27] [--seed 0]
        [--out bench/data/digits_curves.json.gz]

The task is bench/finetune_task.py's: a resnet18 pretrained on digits 0-4 (worker.pretrain),
fine-tuned on digits 5-9 with its backbone frozen (the worker trains the head on features it
computes once per process: milliseconds per epoch). The configurations are the first
`--configs` points of a seeded scrambled Sobol sequence (Optuna's QMCSampler) over the default
space (sgd_steplr_warmup, warmup fitted to the epochs as the server fits it). Each one trains
in this process through the worker's own code path: the study spec is validated and filled in
by service.spec.StudySpec as the server does, the claim's config is the recipe overridden by
the params (service.spec.recipe), worker.trial.TrialJob reads them, worker.engine.fine_tune
trains. Every trial has the study's one training seed, as in the service.

27 epochs by default: asynchronous successive halving with reduction factor 3 and min_resource
1 then has rungs at 1, 3 and 9 epochs (service.asha.rung_epochs), and the last rung keeps a
factor 3 to the end, as the paper's.

The table (JSON, gzip) holds `meta` (the command, the code commit, seed, space, epochs, the
machine), `params` (one mapping per configuration) and per configuration `val_loss`,
`val_accuracy` and `seconds` lists, one entry per epoch (None after a non-finite loss).
"""

from __future__ import annotations

import argparse
import logging
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from bench.curve_table import save_table
from bench.finetune_task import BENCH, pretrained_weights, study_spec
from service.search_space import load_named_space, to_distributions
from service.spec import StudySpec, fit_warmup, recipe
from worker.engine import Caches, EpochReport, NonFiniteLoss, fine_tune
from worker.trial import TrialJob

logger = logging.getLogger(__name__)

ROOT = BENCH.parent
DEFAULT_OUT = BENCH / "data" / "digits_curves.json.gz"
DIGITS = 6  # decimals kept: the table stays small, and 1e-6 is far below any loss difference


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--configs", type=int, default=500, help="configurations (default 500)")
    p.add_argument("--epochs", type=int, default=27, help="epochs per configuration (default 27)")
    p.add_argument("--seed", type=int, default=0, help="sampler and training seed (default 0)")
    p.add_argument("--image-size", type=int, default=32, help="pixels (default 32)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    return p.parse_args(argv)


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "bench",
                "worker",
                "service",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def spec_of(args: argparse.Namespace, weights: Path) -> StudySpec:
    """The study spec the server would hold (every default filled in)."""
    body = study_spec(
        "curves",
        weights,
        image_size=args.image_size,
        epochs=args.epochs,
        seed=args.seed,
        sampler={"name": "qmc", "seed": args.seed},
        pruner={"name": "none"},
        n_trials=args.configs,
        freeze_backbone=True,
        baseline=False,
    )
    return StudySpec.model_validate(body)


def configurations(spec: StudySpec, count: int, seed: int) -> tuple[list[dict[str, Any]], Any]:
    """`count` params from a seeded scrambled Sobol sequence over the default space."""
    assert isinstance(spec.search_space, str)
    space = fit_warmup(
        load_named_space(spec.search_space, ROOT / "search_spaces"), spec.training.epochs
    )
    distributions = to_distributions(space)
    sampler = optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed)
    study = optuna.create_study(sampler=sampler)
    params = []
    for _ in range(count):
        trial = study.ask(distributions)
        params.append(dict(trial.params))
        study.tell(trial, 0.0)  # the sequence advances with the trial count
    return params, space


def curve(spec_json: dict[str, Any], config: dict[str, Any], seed: int, caches: Caches) -> dict:
    """One configuration trained for every epoch: its val_loss/val_accuracy/seconds lists."""
    job = TrialJob.from_parts(spec_json, config, seed)
    reports: list[EpochReport] = []

    def on_epoch(report: EpochReport) -> bool:
        reports.append(report)
        return False  # never pruned: the table holds whole curves

    try:
        fine_tune(job, caches, on_epoch, device="cpu")
    except NonFiniteLoss as exc:
        logger.warning("non-finite loss after %d epochs: %s", len(reports), exc)
    missing = [None] * (job.training.epochs - len(reports))
    return {
        "val_loss": [round(r.val_loss, DIGITS) for r in reports] + missing,
        "val_accuracy": [round(r.val_accuracy, DIGITS) for r in reports] + missing,
        "seconds": [round(r.seconds, 4) for r in reports] + missing,
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("worker.engine", "worker.features", "worker.models", "worker.data"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    weights = pretrained_weights(args.image_size)
    spec = spec_of(args, weights)
    params, space = configurations(spec, args.configs, args.seed)
    spec_json = spec.model_dump(mode="json")
    base = recipe(spec)
    caches = Caches()
    curves = []
    began = time.perf_counter()
    for i, p in enumerate(params):
        curves.append(curve(spec_json, {**base, **p}, spec.training.seed, caches))
        if (i + 1) % 25 == 0:
            logger.info(
                "%d/%d configurations, %.0f s", i + 1, len(params), time.perf_counter() - began
            )
    meta = {
        "command": "python -m bench.record_curves " + " ".join(argv or sys.argv[1:]),
        "commit": commit(),
        "task": "resnet18 pretrained on digits 0-4, head fine-tuned on digits 5-9 "
        "(frozen backbone), bench/finetune_task.py",
        "seed": args.seed,
        "sampler": "optuna QMCSampler(sobol, scramble=True, seed)",
        "search_space_name": spec.search_space,
        "search_space": space.model_dump(mode="json"),
        "recipe": base,
        "epochs": args.epochs,
        "image_size": args.image_size,
        "objective": spec.objective.model_dump(mode="json"),
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "wall_s": round(time.perf_counter() - began, 1),
    }
    save_table(args.out, meta, params, curves)
    logger.info("wrote %s (%d configurations x %d epochs)", args.out, len(curves), args.epochs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

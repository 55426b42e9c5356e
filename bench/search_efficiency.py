"""Search efficiency: TPE + median pruner, TPE + successive halving and random search without
pruning against each other and against the baseline recipe, through the real service.

    python -m bench.search_efficiency [--seeds 0 1 2] [--trials 40] [--random-trials 120]
        [--epochs 15] [--sh-min-resource 4] [--full --image-size 16 ...]

The task: a resnet18 pretrained on digits 0-4 (worker.pretrain), fine-tuned on digits 5-9.
By default the backbone is frozen (`model.freeze_backbone: true`): the worker computes its
features once per process and each trial trains only the head, milliseconds per epoch, so the
search itself is what costs. `--full` fine-tunes the whole network instead (small images, few
trials: minutes per trial on a busy CPU).

For every seed, one `hpsearch serve` subprocess on a temporary SQLite file holds one study per
arm, created through the API over the search space sgd_steplr_warmup, with training.seed and
the sampler seed set to the seed. Each study is worked by one in-process `worker.runner.Runner`
and the studies run one after another, so trial order, pruning decisions and (fp32 on the CPU)
every loss are reproducible and independent of the machine's load. Search arms have no
baseline trial; the baseline arm is a study of that single trial. Random search gets more
trials than TPE (--random-trials) so that its epochs to within 2 % are measured rather than
bounded; when an arm never gets there, its total is reported as a bound.

Reported per seed and arm: training epochs spent (every epoch a worker trained, pruned trials
included) until the first completed trial within 2 % of the best validation loss seen in any
arm of that seed, and the best validation loss against the baseline's.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.finetune_task import pretrained_weights, run_workers, study_spec, unique_name
from bench.harness import API, create_study, machine, median, running_server, table

WITHIN = 0.02
LOOSE = 0.05  # a second, looser column
RANDOM = "random, no pruning"
BASELINE_ARM = "baseline recipe"


@dataclass(frozen=True)
class Arm:
    name: str
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    baseline_only: bool = False


def arms(seed: int, args: argparse.Namespace) -> list[Arm]:
    """The service's default options for each sampler and pruner (unless the flags change
    them), seeded. TPE's startup trials are random search's first trials (same seed)."""
    tpe = {"name": "tpe", "seed": seed, "n_startup_trials": args.tpe_startup}
    out = [
        Arm(
            "TPE + median",
            tpe,
            {"name": "median", "n_startup_trials": args.median_startup, "n_warmup_steps": 1},
        ),
        Arm("TPE + successive halving", tpe, {"name": "successive_halving"}),
    ]
    if args.asha:
        # The asha comparison of issue 13: successive halving with asha's rungs, then asha.
        rungs = {"reduction_factor": 3, "min_resource": 1}
        out = [
            out[0],
            Arm("TPE + successive halving (3, 1)", tpe, {"name": "successive_halving", **rungs}),
            Arm("TPE + asha stopping", tpe, {"name": "asha", **rungs, "mode": "stopping"}),
            Arm("TPE + asha promotion", tpe, {"name": "asha", **rungs, "mode": "promotion"}),
        ]
    if args.sh_min_resource:
        out.append(
            Arm(
                f"TPE + SH, min_resource {args.sh_min_resource}",
                tpe,
                {"name": "successive_halving", "min_resource": args.sh_min_resource},
            )
        )
    return [
        *out,
        Arm(RANDOM, {"name": "random", "seed": seed}, {"name": "none"}),
        Arm(BASELINE_ARM, {"name": "random", "seed": seed}, {"name": "none"}, baseline_only=True),
    ]


@dataclass(frozen=True)
class ArmResult:
    arm: str
    seed: int
    trials: list[dict[str, Any]]  # TrialPublic bodies, by trial number
    wall_s: float
    # (trial number, first epoch it trained) per claim, in order; empty: one claim per trial,
    # in number order
    claims: tuple[tuple[int, int], ...] = ()

    @property
    def completed(self) -> list[dict[str, Any]]:
        return [t for t in self.trials if t["state"] == "complete" and t["val_loss"] is not None]

    @property
    def epochs(self) -> int:
        return sum(t["epochs"] for t in self.trials)

    @property
    def best(self) -> dict[str, Any] | None:
        return min(self.completed, key=lambda t: t["val_loss"], default=None)

    def runs(self) -> list[tuple[dict[str, Any], int, bool]]:
        """(trial, epochs trained, whether the trial ended) per claim, in the order trained:
        a paused trial's run ends where its next claim resumes."""
        by_number = {t["number"]: t for t in self.trials}
        claims = list(self.claims) or [(t["number"], 0) for t in self.trials]
        out = []
        for i, (number, start) in enumerate(claims):
            trial = by_number[number]
            later = [s for n, s in claims[i + 1 :] if n == number]
            end = later[0] if later else trial["epochs"]
            out.append((trial, end - start, not later))
        return out

    def epochs_to(self, threshold: float) -> int | None:
        """Epochs trained until the first completed trial at or under `threshold`."""
        spent = 0
        for t, epochs, ended in self.runs():
            spent += epochs
            if (
                ended
                and t["state"] == "complete"
                and t["val_loss"] is not None
                and t["val_loss"] <= threshold
            ):
                return spent
        return None

    def count(self, state: str) -> int:
        return sum(t["state"] == state for t in self.trials)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default 0 1 2")
    p.add_argument("--trials", type=int, default=40, help="trials per search arm (default 40)")
    p.add_argument(
        "--random-trials",
        type=int,
        default=120,
        help="trials of random search (default 120: enough that it usually gets "
        "within 2 %% of the best, so its epochs are measured, not bounded)",
    )
    p.add_argument(
        "--tpe-startup",
        type=int,
        default=10,
        help="TPE n_startup_trials (default 10, the service's)",
    )
    p.add_argument(
        "--median-startup",
        type=int,
        default=5,
        help="median pruner n_startup_trials (default 5, the service's)",
    )
    p.add_argument(
        "--sh-min-resource",
        type=int,
        help="add an arm: TPE + successive halving with this min_resource",
    )
    p.add_argument(
        "--asha",
        action="store_true",
        help="the arms of issue 13: TPE + median, successive halving and asha (stopping, "
        "promotion) with reduction_factor 3 and min_resource 1, and random search",
    )
    p.add_argument(
        "--epoch-budget",
        type=int,
        help="give every search arm this many epochs instead of a number of trials (its "
        "worker stops there): arms that stop or pause early try more configurations",
    )
    p.add_argument("--epochs", type=int, default=15, help="epochs per trial (default 15)")
    p.add_argument("--image-size", type=int, default=32, help="pixels (default 32)")
    p.add_argument(
        "--full",
        action="store_true",
        help="fine-tune the whole network instead of the head on frozen features",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return p.parse_args(argv)


def trials_of(arm: Arm, args: argparse.Namespace) -> int:
    if arm.baseline_only:
        return 1
    if args.epoch_budget:
        return args.epoch_budget  # more than the budget can ever train: the budget binds
    return args.random_trials if arm.name == RANDOM else args.trials


def run_arm(
    url: str,
    arm: Arm,
    seed: int,
    args: argparse.Namespace,
    weights: Path,
    caches: Any,
    out: list[ArmResult],
) -> None:
    name = unique_name(f"eff-s{seed}")
    spec = study_spec(
        name,
        weights,
        image_size=args.image_size,
        epochs=args.epochs,
        seed=seed,
        sampler=arm.sampler,
        pruner=arm.pruner,
        n_trials=trials_of(arm, args),
        freeze_backbone=not args.full,
        baseline=arm.baseline_only,
    )
    if arm.pruner["name"] == "asha" and arm.pruner.get("mode") == "promotion":
        spec["training"]["checkpoint_every"] = 0  # a paused trial uploads its own
    create_study(url, spec)
    began = time.perf_counter()
    claims: list[tuple[int, int]] = []
    budget = None if arm.baseline_only else args.epoch_budget
    run_workers(url, name, 1, caches, claims, budget)
    wall = time.perf_counter() - began
    trials = httpx.get(f"{url}{API}/studies/{name}/trials", timeout=60).raise_for_status().json()
    by_number = sorted(trials, key=lambda t: t["number"])
    out.append(ArmResult(arm.name, seed, by_number, wall, tuple(claims)))


def run_seed(seed: int, args: argparse.Namespace, weights: Path, caches: Any) -> list[ArmResult]:
    """The arms of one seed, one after another: trials run side by side in one process are not
    reproducible (torch's global RNG, which initialises the new head, is shared by threads)."""
    out: list[ArmResult] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-eff-") as tmp,
        running_server(f"sqlite:///{Path(tmp) / 'bench.db'}", Path(tmp), "warning") as server,
    ):
        for arm in arms(seed, args):
            run_arm(server.url, arm, seed, args, weights, caches, out)
    return out


# --- reporting ---------------------------------------------------------------------------------
def fmt_epochs(value: int | None, total: int) -> str:
    return f"{value}" if value is not None else f"not found (> {total})"


def seed_table(results: list[ArmResult]) -> tuple[str, float, float]:
    """The table of one seed, its best loss seen, and the baseline's loss."""
    best_seen = min(r.best["val_loss"] for r in results if r.best is not None)
    baseline = next(r for r in results if r.arm == BASELINE_ARM).best
    base_loss = baseline["val_loss"] if baseline else math.nan
    threshold, loose = best_seen * (1 + WITHIN), best_seen * (1 + LOOSE)
    rows = []
    for r in results:
        best = r.best
        rows.append(
            [
                r.arm,
                f"{r.count('complete')}/{r.count('pruned')}/{r.count('fail')}",
                r.epochs,
                fmt_epochs(r.epochs_to(threshold), r.epochs),
                fmt_epochs(r.epochs_to(loose), r.epochs),
                f"{best['val_loss']:.4f}" if best else "-",
                f"{best['val_accuracy']:.3f}" if best else "-",
                f"{100 * (base_loss - best['val_loss']) / base_loss:+.1f}" if best else "-",
                f"{r.wall_s:.0f}",
            ]
        )
    header = [
        "arm",
        "complete/pruned/failed",
        "epochs spent",
        "epochs to within 2 %",
        "to 5 %",
        "best val loss",
        "its accuracy",
        "better than baseline %",
        "wall s",
    ]
    return table(header, rows), best_seen, base_loss


def epochs_ratio(random: ArmResult, pruned: ArmResult, threshold: float) -> tuple[float, str]:
    """random's epochs-to-2 % over the pruned arm's; '>=' when random never got there (its
    total is a lower bound), '<=' when the pruned arm never did."""
    r, p = random.epochs_to(threshold), pruned.epochs_to(threshold)
    if r is None and p is None:
        return math.nan, "?"
    if p is None:
        return r / pruned.epochs, "<="
    if r is None:
        return random.epochs / p, ">="
    return r / p, "="


def summary(all_results: dict[int, list[ArmResult]]) -> dict[str, list[tuple[float, str]]]:
    ratios: dict[str, list[tuple[float, str]]] = {}
    for results in all_results.values():
        best_seen = min(r.best["val_loss"] for r in results if r.best is not None)
        by_arm = {r.arm: r for r in results}
        for arm in (a for a in by_arm if a not in (RANDOM, BASELINE_ARM)):
            ratios.setdefault(arm, []).append(
                epochs_ratio(by_arm[RANDOM], by_arm[arm], best_seen * (1 + WITHIN))
            )
    return ratios


def regrets(all_results: dict[int, list[ArmResult]]) -> dict[str, list[float]]:
    """Per arm, per seed: how far its best val loss is above the best any arm of the seed
    found, in % (0: it found the best)."""
    out: dict[str, list[float]] = {}
    for results in all_results.values():
        best_seen = min(r.best["val_loss"] for r in results if r.best is not None)
        for r in results:
            if r.arm != BASELINE_ARM:
                loss = r.best["val_loss"] if r.best else math.inf
                out.setdefault(r.arm, []).append(100 * (loss - best_seen) / best_seen)
    return out


def beats_baseline(all_results: dict[int, list[ArmResult]]) -> dict[str, int]:
    wins: dict[str, int] = {}
    for results in all_results.values():
        base = next(r for r in results if r.arm == BASELINE_ARM).best
        for r in results:
            if r.arm != BASELINE_ARM and r.best and base:
                wins[r.arm] = wins.get(r.arm, 0) + (r.best["val_loss"] < base["val_loss"])
    return wins


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    from worker.engine import Caches

    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    started = time.perf_counter()
    weights = pretrained_weights(32)
    what = "full fine-tuning" if args.full else "frozen backbone, head only (cached features)"
    print(
        f"task: resnet18 pretrained on digits 0-4 ({weights.name}), fine-tuned on digits 5-9, "
        f"{what}, {args.image_size}px; {args.trials} trials per TPE arm, {args.random_trials} "
        f"for random search, {args.epochs} epochs each; seeds {args.seeds}"
    )
    caches = Caches()
    all_results: dict[int, list[ArmResult]] = {}
    for seed in args.seeds:
        all_results[seed] = run_seed(seed, args, weights, caches)
        text, best_seen, base_loss = seed_table(all_results[seed])
        print(
            f"\nseed {seed}: best val loss seen {best_seen:.4f} (2 % threshold "
            f"{best_seen * (1 + WITHIN):.4f}), baseline {base_loss:.4f}\n{text}",
            flush=True,
        )
    wins = beats_baseline(all_results)
    n = len(args.seeds)
    print(f"\nmachine at the end: {machine()}; {time.perf_counter() - started:.0f} s in all")
    for arm, count in wins.items():
        print(f"{arm}: best configuration beats the baseline in {count} of {n} seeds")
    for arm, values in regrets(all_results).items():
        per_seed = ", ".join(f"{v:.1f}" for v in values)
        print(
            f"{arm}: regret % (best val loss over the seed's best) median "
            f"{median(values):.1f}, mean {sum(values) / len(values):.1f} (per seed {per_seed})"
        )
    ratios = summary(all_results)
    for arm in sorted(ratios, key=lambda a: a == "TPE + median"):  # the default pruner last
        known = [v for v, _ in ratios[arm] if not math.isnan(v)]
        per_seed = ", ".join(
            "neither found" if math.isnan(v) else f"{sign}{v:.2f}" for v, sign in ratios[arm]
        )
        middle = f"{median(known):.2f}" if known else "n/a"
        print(
            f"epochs-to-within-2% ratio random/{arm} (target >= 3): median {middle} "
            f"(per seed {per_seed})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

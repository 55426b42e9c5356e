"""Training loop: the worker's epoch against the plain loop of the common recipe, and the time
from claim to the first optimizer step against a plain script that loads everything per trial.

    python -m bench.training_loop [--repeats 7] [--trials 8] [--image-size 32] [--threads 1]

(a) Epoch time. Both arms run in this process with the same thread count, on the same decoded
tensors (digits 5-9), the same model (resnet18 pretrained on digits 0-4, new head), batch size
and recipe (SGD lr .01 momentum .9, StepLR(10, .1)). The worker arm is `worker.engine.fine_tune`
itself (one epoch per call, a stub on_epoch; its EpochReport gives the training and whole-epoch
times); the plain arm is the shortest loop one would write: index the float tensors, step,
StepLR per epoch, then evaluate. Arms alternate, in a shuffled order per repeat, and each starts
from a fresh model built outside the clock. The worker runs with augment off (the same work as
the plain loop) and on (random crops, the demo's setting).

(b) Claim to first step, for trials 2..N of a real study: a `hpsearch serve` subprocess on a
temporary SQLite file, a `worker.runner.Runner` whose `run_trial` gets each claim; a global
optimizer-step hook records the end of the first step and raises, so the trial fails at once
and the next one is claimed. The plain arm, alternating with it, does what a script run per
trial does: decode the digits, build the model, torch.load the weights, first step (imports
already done, which favours it).
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from bench.finetune_task import (
    BASELINE,
    FINETUNE_CLASSES,
    data_section,
    model_section,
    pretrained_weights,
    study_spec,
    unique_name,
)
from bench.harness import create_study, machine, median, median_spread, running_server, table

MEAN = (0.485, 0.456, 0.406)  # worker.models.IMAGENET_MEAN / _STD: what the worker normalises by
STD = (0.229, 0.224, 0.225)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeats", type=int, default=7, help="epochs per arm in (a) (default 7)")
    p.add_argument("--trials", type=int, default=8, help="trials per arm in (b) (default 8)")
    p.add_argument("--image-size", type=int, default=32, help="pixels (default 32)")
    p.add_argument("--batch-size", type=int, default=64, help="default 64")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads, the same for every arm (default 1)"
    )
    p.add_argument("--skip", choices=("epoch", "claim"), help="leave out part (a) or (b)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# --- the plain loop ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Tensors:
    """Normalised float center crops: what a plain script trains on."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor


def normalise(images: Tensor, image_size: int) -> Tensor:
    top = (images.shape[-1] - image_size) // 2
    crop = images[:, :, top : top + image_size, top : top + image_size].float() / 255
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return ((crop - mean) / std).contiguous()


def tensors_of(data: Any) -> Tensors:
    """The worker's decoded ImageData as plain float tensors."""
    size = data.image_size
    return Tensors(
        normalise(data.train.images, size),
        data.train.labels,
        normalise(data.val.images, size),
        data.val.labels,
    )


def plain_model(weights: Path | dict[str, Tensor], num_classes: int, seed: int) -> nn.Module:
    """resnet18 with the pretrained weights and a fresh head, as a script would build it."""
    if isinstance(weights, Path):
        weights = torch.load(weights, map_location="cpu", weights_only=True)
    state = weights
    model = torchvision.models.resnet18()
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False)
    torch.manual_seed(seed)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def plain_recipe(model: nn.Module) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.StepLR]:
    opt = torch.optim.SGD(
        model.parameters(),
        lr=BASELINE["lr"],
        momentum=BASELINE["momentum"],
        weight_decay=BASELINE["weight_decay"],
    )
    return opt, torch.optim.lr_scheduler.StepLR(opt, BASELINE["step_size"], BASELINE["gamma"])


def plain_epoch(model: nn.Module, data: Tensors, batch_size: int, seed: int) -> tuple[float, float]:
    """One epoch of the plain loop; returns (training seconds, whole-epoch seconds)."""
    opt, sched = plain_recipe(model)
    began = time.perf_counter()
    model.train()
    perm = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(seed))
    running = 0.0
    for i in range(len(perm) // batch_size):
        idx = perm[i * batch_size : (i + 1) * batch_size]
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        running += loss.item()
    sched.step()
    trained = time.perf_counter()
    model.eval()
    correct, loss_sum = 0, 0.0
    with torch.inference_mode():
        for x, y in zip(
            data.x_val.split(2 * batch_size), data.y_val.split(2 * batch_size), strict=True
        ):
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
    return trained - began, time.perf_counter() - began


# --- (a) epoch time ----------------------------------------------------------------------------
def worker_job(weights: Path, image_size: int, batch_size: int, augment: bool, seed: int) -> Any:
    from worker.trial import TrialJob

    spec = {
        "model": model_section(weights),
        "data": data_section(image_size, batch_size, augment),
        "training": {
            "epochs": 1,
            "compile": False,
            "checkpoint_every": 0,
            "norm_weight_decay": 0.0,
        },
        "objective": {"metric": "val_loss", "epoch": "last"},
    }
    return TrialJob.from_parts(spec, {**BASELINE, "batch_size": batch_size}, seed)


def worker_epoch(job: Any, caches: Any, n_train: int) -> tuple[float, float]:
    """One epoch through fine_tune; (training seconds, whole-epoch seconds) from its report
    (the last incomplete batch is dropped, so it trained n_train // batch_size batches)."""
    from worker.engine import fine_tune

    reports: list[Any] = []
    fine_tune(job, caches, lambda r: reports.append(r) or False)
    batch = job.hparams.batch_size
    return batch * (n_train // batch) / reports[0].images_per_s, reports[0].seconds


def epoch_benchmark(args: argparse.Namespace, weights: Path) -> float:
    from worker.data import DataSpec
    from worker.engine import Caches

    caches = Caches()
    data = caches.data.get(DataSpec.from_dict(data_section(args.image_size, args.batch_size)))
    tensors = tensors_of(data)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    jobs = {
        aug: worker_job(weights, args.image_size, args.batch_size, aug, args.seed)
        for aug in (False, True)
    }
    arms: dict[str, Callable[[], tuple[float, float]]] = {
        "plain loop": lambda: plain_epoch(
            plain_model(state, data.num_classes, args.seed), tensors, args.batch_size, args.seed
        ),
        "worker (augment off)": lambda: worker_epoch(jobs[False], caches, len(data.train)),
        "worker (augment on)": lambda: worker_epoch(jobs[True], caches, len(data.train)),
    }
    for run in arms.values():  # warm-up: allocator, first-call costs
        run()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
    rng = random.Random(args.seed)
    for _ in range(args.repeats):
        order = list(arms)
        rng.shuffle(order)
        for name in order:
            times[name].append(arms[name]())
    return report_epochs(args, times, len(tensors.y_train))


def report_epochs(
    args: argparse.Namespace, times: dict[str, list[tuple[float, float]]], n_train: int
) -> float:
    plain = times["plain loop"]
    rows = []
    for name, pairs in times.items():
        train, whole = [p[0] for p in pairs], [p[1] for p in pairs]
        # Ratios repeat by repeat (the arms of one repeat ran back to back under the same load).
        ratio = [w[0] / p[0] for w, p in zip(pairs, plain, strict=True)]
        rows.append(
            [
                name,
                median_spread(train, "{:.3f}"),
                median_spread(whole, "{:.3f}"),
                median_spread(ratio, "{:.3f}"),
            ]
        )
    print(
        f"\n(a) epoch time: resnet18, digits {list(FINETUNE_CLASSES)}, {n_train} train images, "
        f"{args.image_size}px, batch {args.batch_size}, {torch.get_num_threads()} thread(s), "
        f"{args.repeats} interleaved repeats; median [min-max]"
    )
    print(table(["arm", "training s", "epoch s (with val)", "training time / plain"], rows))
    worker = times["worker (augment off)"]
    of_medians = median([w[0] for w in worker]) / median([p[0] for p in plain])
    print(f"worker (augment off) / plain, ratio of the median training times: {of_medians:.3f}")
    return median([w[0] / p[0] for w, p in zip(worker, plain, strict=True)])


# --- (b) claim to first step -------------------------------------------------------------------
class FirstStep(Exception):
    """Raised from the step hook: the trial has made its first optimizer step."""


@dataclass
class StepClock:
    """Global hooks: the first module forward and the end of the first optimizer step."""

    first_forward: float = 0.0
    first_step: float = 0.0
    armed: bool = False

    def arm(self) -> None:
        self.first_forward, self.first_step, self.armed = 0.0, 0.0, True

    def on_forward(self, *_: Any) -> None:
        if self.armed and not self.first_forward:
            self.first_forward = time.perf_counter()

    def on_step(self, *_: Any) -> None:
        if self.armed:
            self.first_step, self.armed = time.perf_counter(), False
            raise FirstStep


@dataclass(frozen=True)
class Start:
    """One trial start: seconds from t0 (claim answered / script start) to the first forward and
    to the end of the first step; the claim call itself."""

    claim: float
    prepare: float
    first_step: float


def worker_start(runner: Any, clock: StepClock) -> Start:
    cfg = runner.config
    began = time.perf_counter()
    claim = runner.client.claim(cfg.worker_id, cfg.study, cfg.device, cfg.host)
    t0 = time.perf_counter()
    if claim is None:
        raise RuntimeError("the study handed out no trial")
    clock.arm()
    status = runner.run_trial(claim)
    if status != "failed" or not clock.first_step:
        raise RuntimeError(f"the trial ended {status!r} before its first step")
    return Start(t0 - began, clock.first_forward - t0, clock.first_step - t0)


def plain_start(weights: Path, image_size: int, batch_size: int, seed: int) -> Start:
    """What a script run per trial does before its first step (its imports excluded)."""
    from sklearn.datasets import load_digits

    t0 = time.perf_counter()
    digits = load_digits()
    keep = torch.from_numpy(digits.target).unsqueeze(1) == torch.tensor(FINETUNE_CLASSES)
    mask = keep.any(1)
    labels = keep[mask].float().argmax(1)
    pixels = torch.from_numpy(digits.images).float()[mask].unsqueeze(1) / 16
    pixels = F.interpolate(pixels, size=image_size, mode="bilinear").expand(-1, 3, -1, -1)
    x = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=gen)
    n_val = len(perm) // 5
    train = perm[n_val:]
    model = plain_model(weights, len(FINETUNE_CLASSES), seed)
    opt, _sched = plain_recipe(model)
    model.train()
    idx = train[torch.randperm(len(train), generator=gen)[:batch_size]]
    prepared = time.perf_counter()
    loss = F.cross_entropy(model(x[idx].contiguous()), labels[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    return Start(0.0, prepared - t0, time.perf_counter() - t0)


def meta_build(state: dict[str, Tensor]) -> nn.Module:
    """A pretrained resnet18 without the random init: built on the meta device, then given
    copies of the cached weights; only the new head is initialised."""
    with torch.device("meta"):
        model = torchvision.models.resnet18()
    body = {k: v.clone() for k, v in state.items() if not k.startswith("fc.")}
    model.load_state_dict(body, strict=False, assign=True)
    model.fc = nn.Linear(model.fc.in_features, 5)
    return model


def prepare_breakdown(weights: Path, repeats: int) -> None:
    """What a trial start is made of, each piece timed alone (median [min-max] ms)."""
    import copy

    from sklearn.datasets import load_digits

    from worker.models import ModelSpec, WeightsCache, build_network

    cache = WeightsCache()
    spec = ModelSpec.from_dict(model_section(weights))
    template = build_network(spec, num_classes=5, image_size=32, seed=0, cache=cache).module
    pieces: dict[str, Callable[[], object]] = {
        "torchvision resnet18() (random init)": torchvision.models.resnet18,
        "worker build_network (init + load cached weights)": lambda: build_network(
            spec, num_classes=5, image_size=32, seed=0, cache=cache
        ),
        "copy.deepcopy of a built resnet18": lambda: copy.deepcopy(template),
        "meta-device resnet18 + load_state_dict(assign=True) of clones": lambda: meta_build(
            cache.state_dict(spec) or {}
        ),
        "torch.load of the weights file": lambda: torch.load(weights, weights_only=True),
        "sklearn load_digits": load_digits,
    }
    rows = []
    for name, piece in pieces.items():
        spent = []
        for _ in range(repeats):
            began = time.perf_counter()
            piece()
            spent.append((time.perf_counter() - began) * 1000)
        rows.append([name, median_spread(spent, "{:.0f}")])
    print("\npieces of a trial start, timed alone, ms; median [min-max]")
    print(table(["piece", "ms"], rows))


def claim_benchmark(args: argparse.Namespace, weights: Path) -> float:
    from torch.nn.modules.module import register_module_forward_pre_hook
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from bench.finetune_task import worker_config
    from worker.engine import Caches
    from worker.runner import Runner

    logging.getLogger("worker.runner").setLevel(logging.CRITICAL)  # each trial "fails"
    clock = StepClock()
    hooks = [
        register_module_forward_pre_hook(clock.on_forward),
        register_optimizer_step_post_hook(clock.on_step),
    ]
    worker: list[Start] = []
    plain: list[Start] = []
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp,
            running_server(f"sqlite:///{Path(tmp) / 'bench.db'}", Path(tmp), "warning") as server,
        ):
            name = unique_name("claim")
            create_study(
                server.url,
                study_spec(
                    name,
                    weights,
                    image_size=args.image_size,
                    epochs=10,
                    seed=args.seed,
                    sampler={"name": "tpe", "seed": args.seed},
                    pruner={"name": "median", "n_startup_trials": 5, "n_warmup_steps": 1},
                    n_trials=args.trials,
                    freeze_backbone=False,
                    baseline=True,
                ),
            )
            runner = Runner(worker_config(server.url, name, "claim"), Caches(), threading.Event())
            for i in range(args.trials):
                pair = [
                    lambda: worker.append(worker_start(runner, clock)),
                    lambda: plain.append(
                        plain_start(weights, args.image_size, args.batch_size, args.seed)
                    ),
                ]
                for run in pair if i % 2 == 0 else reversed(pair):
                    clock.armed = False
                    run()
    finally:
        for hook in hooks:
            hook.remove()
    ratio = report_starts(args, worker, plain)
    prepare_breakdown(weights, max(3, args.trials // 2))
    return ratio


def report_starts(args: argparse.Namespace, worker: list[Start], plain: list[Start]) -> float:
    def row(name: str, starts: list[Start]) -> list[str]:
        return [
            name,
            median_spread([s.claim * 1000 for s in starts], "{:.0f}"),
            median_spread([s.prepare * 1000 for s in starts], "{:.0f}"),
            median_spread([s.first_step * 1000 for s in starts], "{:.0f}"),
        ]

    print(
        f"\n(b) claim to first optimizer step, ms: resnet18 on digits {list(FINETUNE_CLASSES)} "
        f"at {args.image_size}px, batch {args.batch_size}, {torch.get_num_threads()} "
        f"thread(s); {args.trials} trials per arm, alternating; median [min-max]"
    )
    print(
        table(
            ["arm", "claim call", "t0 to first forward", "t0 to end of first step"],
            [
                row("worker, trial 1 (cold caches)", worker[:1]),
                row("worker, trials 2..N (cached)", worker[1:]),
                row("plain script, every trial", plain),
            ],
        )
    )
    ratio = [w.first_step / p.first_step for w, p in zip(worker[1:], plain[1:], strict=True)]
    print(
        f"ratio worker (trials 2..N) / plain, first step: median {median(ratio):.3f} "
        f"[{min(ratio):.3f}-{max(ratio):.3f}]"
    )
    return median(ratio)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    started = time.perf_counter()
    weights = pretrained_weights(args.image_size)
    print(f"pretrained weights: {weights} ({time.perf_counter() - started:.0f} s)")
    epoch_ratio = claim_ratio = None
    if args.skip != "claim":
        claim_ratio = claim_benchmark(args, weights)
    if args.skip != "epoch":
        epoch_ratio = epoch_benchmark(args, weights)
    print(f"\nmachine at the end: {machine()}; {time.perf_counter() - started:.0f} s in all")
    if claim_ratio is not None:
        print(f"claim-to-first-step ratio worker/plain (trials 2..N): {claim_ratio:.3f}")
    if epoch_ratio is not None:
        print(
            f"epoch ratio worker/plain (training time, median of paired repeats, "
            f"target <= 1.05): {epoch_ratio:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

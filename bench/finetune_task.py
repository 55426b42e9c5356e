"""The fine-tuning task of bench/training_loop.py and bench/search_efficiency.py: a resnet18
pretrained on digits 0-4 (made once by worker.pretrain and cached under bench/.cache/),
fine-tuned on digits 5-9; its study spec; in-process workers (worker.runner.Runner)."""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path
from typing import Any

from service.search_space import COMMON_RECIPE

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / ".cache"
ARCH = "resnet18"
PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
FINETUNE_CLASSES = (5, 6, 7, 8, 9)
# The common recipe: what the baseline trial runs.
BASELINE: dict[str, Any] = dict(COMMON_RECIPE)

logger = logging.getLogger(__name__)


def pretrained_weights(image_size: int = 32) -> Path:
    """The digits-0-4 resnet18 state dict, trained on first use (~20 s on a quiet machine)."""
    from worker.pretrain import pretrain_digits

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{ARCH}-digits0-4-{image_size}px.pt"
    return pretrain_digits(path, ARCH, PRETRAIN_CLASSES, image_size=image_size)


def data_section(image_size: int, batch_size: int = 64, augment: bool = True) -> dict[str, Any]:
    return {
        "kind": "digits",
        "root": None,
        "classes": list(FINETUNE_CLASSES),
        "image_size": image_size,
        "resize_size": round(image_size * 256 / 224),
        "interpolation": "bilinear",
        "batch_size": batch_size,
        "val_fraction": 0.2,
        "augment": "flip_crop" if augment else "none",
        "on_bad_image": "error",
    }


def model_section(weights: Path, freeze_backbone: bool = False) -> dict[str, Any]:
    return {
        "arch": ARCH,
        "weights": None,
        "weights_path": str(weights),
        "freeze_backbone": freeze_backbone,
    }


def study_spec(
    name: str,
    weights: Path,
    *,
    image_size: int,
    epochs: int,
    seed: int,
    sampler: dict[str, Any],
    pruner: dict[str, Any],
    n_trials: int,
    freeze_backbone: bool,
    baseline: bool,
) -> dict[str, Any]:
    """A study over sgd_steplr_warmup. No checkpoints: a benchmark never resumes, and a
    resnet18 training state is ~90 MB per epoch to upload."""
    return {
        "name": name,
        "model": model_section(weights, freeze_backbone),
        "data": data_section(image_size),
        "training": {"epochs": epochs, "seed": seed, "checkpoint_every": 0},
        "search_space": "sgd_steplr_warmup",
        "sampler": sampler,
        "pruner": pruner,
        "n_trials": n_trials,
        "baseline": BASELINE if baseline else False,
    }


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def worker_config(url: str, study: str, label: str, **overrides: Any) -> Any:
    """A WorkerConfig for one in-process Runner on the CPU; no final-weights upload (the
    benchmark reads losses, not weights)."""
    from worker.runner import WorkerConfig

    return WorkerConfig(
        server=url,
        token=None,
        worker_id=f"bench-{label}",
        host="bench",
        device="cpu",
        study=study,
        exit_when_idle=True,
        upload_weights=False,
        **overrides,
    )


def run_workers(
    url: str,
    study: str,
    count: int,
    caches: Any,
    claims: list[tuple[int, int]] | None = None,
    epoch_budget: int | None = None,
) -> None:
    """`count` Runner threads sharing one process's caches, until the study has no trial left,
    or until they have trained `epoch_budget` epochs (then the trial in training is handed
    back). `claims` gets (trial number, first epoch it trains) for each claim, in the order
    claimed: with one worker, the order in which epochs were trained (a promoted trial is
    claimed again)."""
    from worker.runner import Runner

    stop = threading.Event()
    trained = [0]
    lock = threading.Lock()

    class RecordingRunner(Runner):
        def run_trial(self, claim: Any) -> str:
            if claims is not None:
                resume = claim.get("resume")
                claims.append((claim["number"], resume["epoch"] + 1 if resume else 0))
            return super().run_trial(claim)

        def _reporter(self, trial_id: int) -> Any:
            report = super()._reporter(trial_id)

            def on_epoch(epoch: Any) -> Any:
                verdict = report(epoch)
                with lock:
                    trained[0] += 1
                    if epoch_budget is not None and trained[0] >= epoch_budget:
                        stop.set()
                return verdict

            return on_epoch

    threads = [
        threading.Thread(
            target=RecordingRunner(worker_config(url, study, f"{study}-{i}"), caches, stop).run,
            name=f"runner-{study}-{i}",
        )
        for i in range(count)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

"""A small pretrained model made on the spot: a torchvision model trained on digits 0-4.

The demo fine-tunes it on digits 5-9 through ``model.weights_path``, which needs no
download. Training takes well under a minute on two CPU cores.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from worker.checkpoints import atomic_write
from worker.engine import Caches, fine_tune
from worker.trial import TrialJob

logger = logging.getLogger(__name__)

PRETRAIN_HPARAMS = {
    "lr": 0.1,
    "momentum": 0.9,
    "step_size": 3,
    "gamma": 0.2,
    "warmup_epochs": 1,
    "weight_decay": 5e-4,
    "nesterov": True,
    "batch_size": 64,
    "head_lr_mult": 1.0,
    "label_smoothing": 0.0,
}


def pretrain_digits(
    out_path: str | os.PathLike[str],
    arch: str = "resnet18",
    classes: Sequence[int] = (0, 1, 2, 3, 4),
    image_size: int = 32,
    epochs: int = 6,
    seed: int = 0,
    *,
    device: str = "cpu",
    caches: Caches | None = None,
) -> Path:
    """Train ``arch`` from scratch on the digits ``classes`` and save its state dict.

    Returns ``out_path`` at once if the file already exists.
    """
    out = Path(out_path)
    if out.exists():
        logger.info("pretrained digits model %s exists", out)
        return out
    spec = {
        "model": {"arch": arch, "weights": None, "weights_path": None, "freeze_backbone": False},
        "data": {
            "kind": "digits",
            "root": None,
            "image_size": image_size,
            "resize_size": round(image_size * 256 / 224),  # as the server decides
            "interpolation": "bilinear",
            "val_fraction": 0.2,
            "classes": list(classes),
            "augment": "flip_crop",
            "on_bad_image": "error",
        },
        # every parameter decays, as when the shipped digits models were first trained
        "training": {
            "epochs": epochs,
            "compile": False,
            "checkpoint_every": 0,
            "norm_weight_decay": None,
        },
        "objective": {"metric": "val_loss", "epoch": "last"},
    }
    job = TrialJob.from_parts(spec, PRETRAIN_HPARAMS, seed)
    outcome = fine_tune(job, caches or Caches(), lambda report: False, device=device)
    logger.info(
        "pretrained %s on digits %s: val_accuracy %.3f, saving %s",
        arch, list(classes), outcome.val_accuracy, out,
    )  # fmt: skip
    return atomic_write(out, outcome.weights_bytes())

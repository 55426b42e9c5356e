"""The tiny trial the worker tests train: digits 0 and 1 at 16 px, its spec sections as the
server sends them (every field filled in) and its hyperparameters."""

from __future__ import annotations

from typing import Any

from worker.models import ModelSpec

BASE_JOB: dict[str, Any] = {
    "model": {
        "arch": "mobilenet_v3_small",
        "weights": None,
        "weights_path": None,
        "freeze_backbone": False,
    },
    "data": {
        "kind": "digits",
        "root": None,
        "image_size": 16,
        "resize_size": 18,  # the server's x 256/224
        "interpolation": "bilinear",
        "batch_size": 32,
        "val_fraction": 0.25,
        "classes": [0, 1],
        "augment": "flip_crop",
        "on_bad_image": "error",
    },
    "training": {
        "epochs": 2,
        "seed": 0,
        "compile": False,
        "checkpoint_every": 1,
        "norm_weight_decay": 0.0,
    },
    "objective": {"metric": "val_loss", "epoch": "last"},
    "hparams": {
        "lr": 0.01,
        "momentum": 0.9,
        "step_size": 1,
        "gamma": 0.5,
        "warmup_epochs": 1,
        "weight_decay": 1e-4,
        "nesterov": False,
        "batch_size": 32,
        "head_lr_mult": 1.0,
        "label_smoothing": 0.0,
    },
}


def model_spec(
    arch: str,
    *,
    weights: str | None = None,
    weights_path: str | None = None,
    freeze_backbone: bool = False,
) -> ModelSpec:
    """A model section for tests that build networks directly."""
    return ModelSpec(arch, weights, weights_path, freeze_backbone)

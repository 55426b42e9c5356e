"""SGD, its parameter groups and its learning-rate schedule: linear warmup, then StepLR.

Parameters fall in up to four groups: backbone or head (the new head's lr is
``lr * head_lr_mult``), and decayed or not (normalisation layers' parameters and every
bias take ``norm_weight_decay`` instead of ``weight_decay``, as torchvision's references
``set_weight_decay`` do). The schedulers scale every group's own lr alike.

The scheduler is stepped once per iteration, after ``optimizer.step()``. Warmup
rises linearly over ``warmup_epochs`` epochs from ``WARMUP_START * lr`` to ``lr``;
then the rate is multiplied by ``gamma`` every ``step_size`` epochs counted from
the end of warmup (torchvision's references chain the two the same way). As a
formula, for the lr used at 0-based iteration ``t`` with ``W`` warmup iterations
and ``n`` iterations per epoch::

    t <  W:  lr * (WARMUP_START + (1 - WARMUP_START) * t / W)
    t >= W:  lr * gamma ** ((t - W) // (step_size * n))
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import LinearLR, LRScheduler, SequentialLR, StepLR

from worker.models import Network
from worker.trial import Hyperparameters

logger = logging.getLogger(__name__)

#: Warmup starts at this fraction of the learning rate (torchvision's default).
WARMUP_START = 0.01


#: Layers whose parameters are normalisation parameters (torchvision's references' list).
NORM_LAYERS: tuple[type[torch.nn.Module], ...] = (
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.LayerNorm,
    torch.nn.GroupNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
    torch.nn.LocalResponseNorm,
)


def _no_decay(module: torch.nn.Module, name: str) -> bool:
    """Whether parameter ``name`` of ``module`` (its own, not a child's) is a norm or bias."""
    return isinstance(module, NORM_LAYERS) or name == "bias"


def parameter_groups(
    network: Network, hparams: Hyperparameters, norm_weight_decay: float | None
) -> list[dict[str, Any]]:
    """SGD parameter groups of the trainable parameters: backbone groups first, then the
    head's (lr * head_lr_mult); in each, norm and bias parameters apart with
    ``norm_weight_decay`` (None: they decay like the rest). Empty groups are left out."""
    head = network.head_name
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for module_name, module in network.module.named_modules():
        in_head = module_name == head or module_name.startswith(head + ".")
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad:
                plain = norm_weight_decay is None or not _no_decay(module, name)
                groups.setdefault((in_head, plain), []).append(param)
    out = []
    for in_head in (False, True):
        for plain in (True, False):
            params = groups.get((in_head, plain))
            if not params:
                continue
            out.append({
                "params": params,
                "lr": hparams.lr * (hparams.head_lr_mult if in_head else 1.0),
                "weight_decay": hparams.weight_decay if plain else norm_weight_decay,
                "name": ("head" if in_head else "backbone") + ("" if plain else ".no_decay"),
            })  # fmt: skip
    return out


def make_optimizer(
    params: Iterable[torch.nn.Parameter] | list[dict[str, Any]],
    hparams: Hyperparameters,
    *,
    fused: bool = False,
) -> torch.optim.SGD:
    """SGD of the trial's hparams over ``params`` (or :func:`parameter_groups`, whose lr and
    weight decay take precedence). ``fused`` (parameters on CUDA): one kernel updates every
    tensor, instead of a few launches per group of tensors."""
    nesterov = hparams.nesterov and hparams.momentum > 0
    return torch.optim.SGD(
        params,
        lr=hparams.lr,
        momentum=hparams.momentum,
        weight_decay=hparams.weight_decay,
        nesterov=nesterov,
        fused=True if fused else None,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, hparams: Hyperparameters, iters_per_epoch: int
) -> LRScheduler:
    """Per-iteration scheduler: LinearLR warmup chained to StepLR with SequentialLR."""
    step_iters = max(1, hparams.step_size) * iters_per_epoch
    decay = StepLR(optimizer, step_size=step_iters, gamma=hparams.gamma)
    warmup_iters = hparams.warmup_epochs * iters_per_epoch
    if warmup_iters <= 0:
        return decay
    warmup = LinearLR(
        optimizer, start_factor=WARMUP_START, end_factor=1.0, total_iters=warmup_iters
    )
    return SequentialLR(optimizer, schedulers=[warmup, decay], milestones=[warmup_iters])


def analytic_lr(hparams: Hyperparameters, iters_per_epoch: int, step: int) -> float:
    """The lr the schedule gives at 0-based iteration ``step`` (the formula above)."""
    lr = hparams.lr
    warmup_iters = hparams.warmup_epochs * iters_per_epoch
    if step < warmup_iters:
        return lr * (WARMUP_START + (1 - WARMUP_START) * step / warmup_iters)
    step_iters = max(1, hparams.step_size) * iters_per_epoch
    return lr * hparams.gamma ** ((step - warmup_iters) // step_iters)

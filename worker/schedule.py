"""SGD and its learning-rate schedule: linear warmup, then StepLR.

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

import torch
from torch.optim.lr_scheduler import LinearLR, LRScheduler, SequentialLR, StepLR

from worker.trial import Hyperparameters

logger = logging.getLogger(__name__)

#: Warmup starts at this fraction of the learning rate (torchvision's default).
WARMUP_START = 0.01


def make_optimizer(
    params: Iterable[torch.nn.Parameter], hparams: Hyperparameters, *, fused: bool = False
) -> torch.optim.SGD:
    """SGD of the trial's hparams. ``fused`` (parameters on CUDA): one kernel updates every
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

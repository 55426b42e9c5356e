from __future__ import annotations

import pytest
import torch

from worker.schedule import WARMUP_START, analytic_lr, make_optimizer, make_scheduler
from worker.trial import Hyperparameters

ITERS = 5
EPOCHS = 9


def hparams(**kw: float) -> Hyperparameters:
    base = {
        "lr": 0.1,
        "momentum": 0.9,
        "step_size": 2,
        "gamma": 0.1,
        "warmup_epochs": 1,
        "weight_decay": 0.0,
        "nesterov": True,
        "batch_size": 8,
        "head_lr_mult": 1.0,
        "label_smoothing": 0.0,
    }
    return Hyperparameters(**{**base, **kw})


PARAMETER_SETS = [
    hparams(warmup_epochs=0, step_size=2, gamma=0.1),
    hparams(warmup_epochs=1, step_size=1, gamma=0.5),
    hparams(warmup_epochs=3, step_size=1, gamma=0.7),  # warmup longer than step_size
    hparams(warmup_epochs=2, step_size=3, gamma=0.9, lr=0.01, nesterov=False),
]


def lrs_of(hp: dict[str, float], steps: int) -> list[float]:
    """The lr of every optimizer step, read the way the training loop reads it."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = make_optimizer([param], hp)
    scheduler = make_scheduler(optimizer, hp, ITERS)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_analytic_formula_by_hand() -> None:
    hp = hparams(lr=1.0, warmup_epochs=1, step_size=1, gamma=0.5)
    assert analytic_lr(hp, 4, 0) == pytest.approx(WARMUP_START)
    assert analytic_lr(hp, 4, 2) == pytest.approx((WARMUP_START + 1) / 2)
    assert analytic_lr(hp, 4, 4) == pytest.approx(1.0)  # warmup done
    assert analytic_lr(hp, 4, 7) == pytest.approx(1.0)
    assert analytic_lr(hp, 4, 8) == pytest.approx(0.5)  # one epoch after warmup
    assert analytic_lr(hp, 4, 12) == pytest.approx(0.25)
    no_warmup = hparams(lr=1.0, warmup_epochs=0, step_size=2, gamma=0.1)
    assert analytic_lr(no_warmup, 4, 0) == 1.0
    assert analytic_lr(no_warmup, 4, 8) == pytest.approx(0.1)


@pytest.mark.parametrize("hp", PARAMETER_SETS)
def test_scheduler_matches_analytic_lr_at_every_step(hp: dict[str, float]) -> None:
    seen = lrs_of(hp, EPOCHS * ITERS)
    expected = [analytic_lr(hp, ITERS, t) for t in range(EPOCHS * ITERS)]
    assert seen == pytest.approx(expected, rel=1e-9, abs=0)
    assert min(seen) < max(seen)  # the schedule really moved


@pytest.mark.parametrize("hp", PARAMETER_SETS)
def test_scheduler_state_dict_resumes_the_same_schedule(hp: dict[str, float]) -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = make_optimizer([param], hp)
    scheduler = make_scheduler(optimizer, hp, ITERS)
    cut = 2 * ITERS + 3
    for _ in range(cut):
        optimizer.step()
        scheduler.step()
    fresh_opt = make_optimizer([torch.nn.Parameter(torch.zeros(1))], hp)
    fresh = make_scheduler(fresh_opt, hp, ITERS)
    fresh_opt.load_state_dict(optimizer.state_dict())
    fresh.load_state_dict(scheduler.state_dict())
    for t in range(cut, EPOCHS * ITERS):
        assert fresh_opt.param_groups[0]["lr"] == pytest.approx(analytic_lr(hp, ITERS, t), rel=1e-9)
        fresh_opt.step()
        fresh.step()


def test_optimizer_takes_hparams() -> None:
    hp = hparams(lr=0.3, momentum=0.8, weight_decay=0.01, nesterov=True)
    group = make_optimizer([torch.nn.Parameter(torch.zeros(1))], hp).param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (
        0.3,
        0.8,
        0.01,
        True,
    )
    # Nesterov needs momentum: without it the flag is dropped instead of failing.
    plain = make_optimizer([torch.nn.Parameter(torch.zeros(1))], hparams(momentum=0.0))
    assert plain.param_groups[0]["nesterov"] is False

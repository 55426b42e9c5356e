from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from worker.checkpoints import (
    TrainingState,
    atomic_write,
    load_training_state,
    save_training_state,
    weights_bytes,
)
from worker.schedule import make_optimizer, make_scheduler
from worker.trial import Hyperparameters

HPARAMS = Hyperparameters(
    lr=0.1, momentum=0.9, step_size=1, gamma=0.5, warmup_epochs=1, weight_decay=0.0,
    nesterov=False, batch_size=4, head_lr_mult=1.0, label_smoothing=0.0,
)  # fmt: skip


def training_state(seed: int) -> TrainingState:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    optimizer = make_optimizer(model.parameters(), HPARAMS)
    return TrainingState(model, optimizer, make_scheduler(optimizer, HPARAMS, 3))


def step(state: TrainingState) -> None:
    loss = state.model(torch.randn(5, 4)).square().mean()
    state.optimizer.zero_grad()
    loss.backward()
    state.optimizer.step()
    state.scheduler.step()


def test_training_state_round_trip() -> None:
    source = training_state(0)
    for _ in range(4):
        step(source)
    data = save_training_state(source, epoch=1)
    after_save = torch.rand(3)
    target = training_state(1)
    assert load_training_state(data, target) == 1
    assert torch.equal(torch.rand(3), after_save)  # the RNG state came back
    for key, value in source.model.state_dict().items():
        assert torch.equal(target.model.state_dict()[key], value)
    assert target.scheduler.state_dict()["last_epoch"] == 4
    assert target.optimizer.param_groups[0]["lr"] == source.optimizer.param_groups[0]["lr"]
    # momentum buffers restored: the next step is identical
    torch.manual_seed(5)
    step(source)
    torch.manual_seed(5)
    step(target)
    for a, b in zip(source.model.parameters(), target.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_weights_bytes_load_with_weights_only() -> None:
    model = training_state(0).model
    loaded = torch.load(io.BytesIO(weights_bytes(model)), weights_only=True)
    assert loaded.keys() == model.state_dict().keys()
    assert torch.equal(loaded["2.weight"], model[2].weight)


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "w.pt"
    assert atomic_write(target, b"one") == target
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["w.pt"]


def test_atomic_write_failure_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "w.pt"
    target.write_bytes(b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["w.pt"]

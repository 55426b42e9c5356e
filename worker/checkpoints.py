"""Training state to and from bytes, and atomic file writes.

A checkpoint holds what torchvision's references keep (model, optimizer, scheduler
and the epoch just finished; no GradScaler, as CUDA runs bf16 autocast, which needs
none) plus the torch RNG states, so a run resumed from it continues exactly where it
stopped. It loads with ``weights_only=True``.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class TrainingState:
    """The objects a checkpoint saves from and restores into."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    # objective.epoch best: the best epoch so far, {"epoch", "val_loss", "val_accuracy",
    # "weights"} (its state dict, on the CPU), so a resumed trial keeps what it had found
    best: dict[str, Any] | None = None


def _to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_training_state(
    state: TrainingState, epoch: int, device: torch.device | str = "cpu"
) -> bytes:
    """Bytes of the training state after 0-based ``epoch`` has finished on ``device``."""
    device = torch.device(device)
    rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return _to_bytes(
        {
            "version": FORMAT_VERSION,
            "epoch": epoch,
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "rng": rng,
            **({} if state.best is None else {"best": state.best}),
        }
    )


def load_training_state(
    data: bytes, state: TrainingState, device: torch.device | str = "cpu"
) -> int:
    """Restore ``state`` (and the RNG states) from ``data``; return the epoch it finished."""
    device = torch.device(device)
    ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if ckpt.get("version") != FORMAT_VERSION:
        raise ValueError(f"unsupported checkpoint version {ckpt.get('version')!r}")
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    state.best = ckpt.get("best")
    torch.set_rng_state(ckpt["rng"]["cpu"])
    if "cuda" in ckpt["rng"] and device.type == "cuda":
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    return int(ckpt["epoch"])


def weights_bytes(model: nn.Module) -> bytes:
    """The model's state dict (on the CPU), as torch.save bytes."""
    return _to_bytes(cpu_state_dict(model))


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's state dict on the CPU (a snapshot: later steps do not change it)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def state_dict_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """A state dict as torch.save bytes."""
    return _to_bytes(state)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target

"""A study's preflight on the worker: before the study's first trial trains, check what every
trial needs, once, and tell a fault of the spec from a fault of this machine.

The checks: the data set (every image decoded once, into the data cache the trials read
anyway; the test folder too), the architecture and its head, the weights, one forward and
backward batch on this worker's device. A missing data root or weights file, or too little
memory, is this machine's fault (:class:`PreflightFault` ``worker``): another worker may have
them. Anything else (the layout, the classes, a corrupt file, an unknown architecture or
weights name, a model without a linear head) would fail on every worker (``spec``).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
import torch.nn.functional as F

from worker.data import ImageBatches
from worker.engine import Caches, network_for
from worker.models import WeightsUnavailable, normalization
from worker.trial import TrialJob

logger = logging.getLogger(__name__)

Fault = Literal["spec", "worker"]

# This machine lacks something another may have: the data root, the weights, the memory.
_WORKER_FAULTS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    WeightsUnavailable,
    MemoryError,
    torch.cuda.OutOfMemoryError,
)


class PreflightFault(Exception):
    """The preflight failed: ``fault`` says whose (the spec's or this worker's)."""

    def __init__(self, fault: Fault, error: str) -> None:
        super().__init__(error)
        self.fault = fault
        self.error = error


def run_preflight(job: TrialJob, caches: Caches, device: str) -> dict[str, Any]:
    """Check the job's study; returns what was found in its data set (the API's StudyData).
    Raises :class:`PreflightFault`."""
    try:
        return _check(job, caches, torch.device(device))
    except _WORKER_FAULTS as exc:
        raise PreflightFault("worker", _describe(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - whatever else fails would fail on every worker
        raise PreflightFault("spec", _describe(exc)) from exc


def _check(job: TrialJob, caches: Caches, device: torch.device) -> dict[str, Any]:
    caches.data.forget_failure(job.data)  # the data as it is now, not as a failure remembered
    data = caches.data.get(job.data, device)
    test = caches.data.get_test(job.data)  # decoded once: each completed trial reads it
    network = network_for(job, caches, data.num_classes)
    module = network.module.to(device)
    mean, std = normalization(job.model)
    batches = ImageBatches(
        data,
        batch_size=job.hparams.batch_size,
        augment=job.data.augment,
        seed=job.seed,
        device=device,
        mean=mean,
        std=std,
    )
    x, y = next(iter(batches.train_batches(0)))
    network.train_mode()
    loss = F.cross_entropy(module(x), y)
    loss.backward()
    del network, module, loss
    found = {
        "classes": list(data.class_names),
        "train_images": len(data.train),
        "val_images": len(data.val),
        "test_images": len(test) if test is not None else 0,
        "skipped_images": data.skipped,
    }
    logger.info(
        "preflight passed: %d classes, %d train / %d val / %d test images, %d skipped",
        len(found["classes"]),
        found["train_images"],
        found["val_images"],
        found["test_images"],
        found["skipped_images"],
    )
    return found


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return (
        text
        if isinstance(exc, ValueError | FileNotFoundError | WeightsUnavailable)
        else f"{type(exc).__name__}: {text}"
    )

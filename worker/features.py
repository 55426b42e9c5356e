"""Backbone features computed once, for trials that train only the head.

With ``freeze_backbone`` the backbone runs in eval mode without augmentation, so
its output for an image never changes: it is computed once per worker process for
a (model spec, data spec, device) and every trial of the study then trains its
head on those features. Batches come in the same order as the image batches of the
same seed and epoch, so the results match the uncached frozen path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from worker.data import (
    BoundedCache,
    DataSpec,
    ImageBatches,
    Split,
    epoch_generator,
    iters_per_epoch,
    train_index_batches,
)
from worker.models import ModelSpec, Network

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSet:
    train: Split  # images: float32 [N, D] features of the head's input
    val: Split


class FeatureCache:
    """Backbone features of this process, keyed by :func:`feature_key`."""

    def __init__(self, capacity: int = 2) -> None:
        self._items: BoundedCache[Hashable, FeatureSet] = BoundedCache(capacity)

    def get_or_create(self, key: Hashable, create: Callable[[], FeatureSet]) -> FeatureSet:
        return self._items.get_or_create(key, create)

    def __len__(self) -> int:
        return len(self._items)


def feature_key(
    model: ModelSpec, data: DataSpec, device: torch.device, seed: int
) -> tuple[Hashable, ...]:
    """What the features depend on. A backbone without pretrained weights is initialised
    from the trial seed, so its features are per seed."""
    weights: Hashable = model.weights
    if model.weights_path:
        stat = Path(model.weights_path).stat()
        weights = (model.weights_path, stat.st_mtime_ns, stat.st_size)
    backbone = (model.arch, weights, None if model.pretrained else seed)
    return (backbone, data.decode_key(), str(device))


def extract_features(
    network: Network,
    images: ImageBatches,
    autocast: Callable[[], AbstractContextManager[Any]],
) -> FeatureSet:
    """The input of the head for every train and val image (center crops, eval mode)."""
    captured: list[Tensor] = []

    def keep_input(_module: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
        captured.append(args[0].float())

    network.module.eval()
    handle = network.head.register_forward_pre_hook(keep_input)
    try:
        splits = []
        for split in (images.data.train, images.data.val):
            captured.clear()
            labels = []
            with torch.inference_mode(), autocast():
                for x, y in images.ordered_batches(split, 2 * images.batch_size):
                    network.module(x)
                    labels.append(y)
            splits.append(Split(torch.cat(captured), torch.cat(labels)))
    finally:
        handle.remove()
    return FeatureSet(splits[0], splits[1])


def cached_features(
    cache: FeatureCache,
    model: ModelSpec,
    data: DataSpec,
    network: Network,
    images: ImageBatches,
    seed: int,
    autocast: Callable[[], AbstractContextManager[Any]],
) -> FeatureSet:
    def create() -> FeatureSet:
        logger.info("computing %s backbone features", model.arch)
        return extract_features(network, images, autocast)

    return cache.get_or_create(feature_key(model, data, images.device, seed), create)


class FeatureBatches:
    """Batches of cached features, in the order :class:`ImageBatches` would use."""

    def __init__(self, features: FeatureSet, *, batch_size: int, seed: int) -> None:
        self.features = features
        self.batch_size = batch_size
        self.seed = seed

    def iters_per_epoch(self) -> int:
        return iters_per_epoch(len(self.features.train), self.batch_size)

    def train_batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        split = self.features.train
        gen = epoch_generator(self.seed, epoch)
        for idx in train_index_batches(len(split), self.batch_size, gen):
            idx = idx.to(split.images.device, non_blocking=True)
            yield split.images[idx], split.labels[idx]

    def val_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        split = self.features.val
        for start in range(0, len(split), 2 * self.batch_size):
            stop = start + 2 * self.batch_size
            yield split.images[start:stop], split.labels[start:stop]

"""Decoded data sets held in memory, and the batches a trial trains on.

A data set is decoded once per worker process into uint8 tensors of a square
``stored_size`` (the spec's ``resize_size``), kept in a :class:`DataCache`
and shared by every trial of a study. Batches are cut from those tensors by an
index permutation drawn from a generator seeded by (trial seed, epoch), so the
data order and the augmentation of an epoch depend on nothing else: a run resumed
from a checkpoint sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from worker.augment import apply_per_image, crops, image_policy, policy_name
from worker.folders import DatasetError, find_layout, open_rgb

logger = logging.getLogger(__name__)

#: Seed of the train/val split: fixed, so every trial of a study sees the same split.
SPLIT_SEED = 20240229
#: Data on the GPU may take at most this fraction of its free memory.
GPU_MEMORY_FRACTION = 0.5

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A small least-recently-used map; a worker process keeps one per kind of thing.

    ``get_or_create(key, create)`` returns the cached value for ``key``, or calls
    ``create()`` once, stores and returns its result. Thread-safe: with ``--trials-per-gpu``
    several trials share one process's caches, and a data set is decoded once, not per thread.
    """

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.RLock()

    def get_or_create(self, key: K, create: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = create()
            self.put(key, value)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


@dataclass(frozen=True)
class DataSpec:
    """The ``data`` section of a study spec, as the server resolved it (the trial's batch size
    is a hyperparameter: :class:`worker.trial.Hyperparameters`)."""

    kind: str
    image_size: int  # the crop the model sees
    resize_size: int  # the shorter side images are resized to (and stored at) before cropping
    interpolation: str  # of that resize, for image folders: "bilinear" or "bicubic"
    val_fraction: float
    root: str | None
    classes: tuple[int, ...] | None
    augment: str  # none | flip_crop | trivialaugment | randaugment (worker.augment)
    on_bad_image: str  # or "skip": leave undecodable files out, counted

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataSpec:
        """From the section's JSON, every field present (other keys are ignored); the root
        resolved on this machine, the classes sorted."""
        classes, root = data["classes"], data["root"]
        return cls(
            kind=str(data["kind"]),
            image_size=int(data["image_size"]),
            resize_size=int(data["resize_size"]),
            interpolation=str(data["interpolation"]),
            val_fraction=float(data["val_fraction"]),
            root=str(Path(root).expanduser().resolve()) if root else None,
            classes=tuple(sorted(int(c) for c in classes)) if classes else None,
            augment=policy_name(data["augment"]),
            on_bad_image=str(data["on_bad_image"]),
        )

    @property
    def stored_size(self) -> int:
        return self.resize_size

    def decode_key(self) -> tuple[Hashable, ...]:
        """What the decoded tensors depend on (not the batch size or augmentation)."""
        return (
            self.kind, self.root, self.image_size, self.resize_size, self.interpolation,
            self.val_fraction, self.classes, self.on_bad_image,
        )  # fmt: skip


@dataclass(frozen=True)
class Split:
    images: Tensor  # uint8 [N, 3, S, S], S = stored size
    labels: Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class ImageData:
    """A decoded data set, placed on one device (or in pinned memory for it)."""

    train: Split
    val: Split
    class_names: tuple[str, ...]
    image_size: int  # the crop the model sees
    flip: bool  # whether a horizontal flip is a valid augmentation
    skipped: int = 0  # undecodable files left out (data.on_bad_image: skip)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class DataCache:
    """Decoded data sets of this process, keyed by the data spec, per device."""

    def __init__(self, capacity: int = 2) -> None:
        self._decoded: BoundedCache[tuple[Hashable, ...], ImageData] = BoundedCache(capacity)
        self._placed: BoundedCache[tuple[Hashable, ...], ImageData] = BoundedCache(capacity)
        self._tests: BoundedCache[tuple[Hashable, ...], Split | None] = BoundedCache(capacity)
        # a faulty data set fails every trial the same way: decode it once, not per trial
        self._failed: dict[tuple[Hashable, ...], str] = {}

    def forget_failure(self, spec: DataSpec) -> None:
        """Decode the data set again at the next ``get`` if it failed before: a preflight run
        again after a study's error was cleared checks the data as it is now."""
        self._failed.pop(spec.decode_key(), None)

    def get_test(self, spec: DataSpec) -> Split | None:
        """The decoded ``test`` folder (on the CPU: it is read once per completed trial), or
        None when the data set has none; decoded once per process, like the other splits."""
        return self._tests.get_or_create(spec.decode_key(), lambda: load_test_split(spec))

    def get(self, spec: DataSpec, device: torch.device | str = "cpu") -> ImageData:
        device = torch.device(device)
        key = spec.decode_key()
        if key in self._failed:
            raise DatasetError(self._failed[key])
        try:
            decoded = self._decoded.get_or_create(key, lambda: load_data(spec))
        except DatasetError as exc:
            self._failed[key] = str(exc)
            raise
        if device.type == "cpu":
            return decoded
        placed = self._placed.get_or_create((*key, str(device)), lambda: place(decoded, device))
        if placed.train.images.device.type == "cpu":  # pinned: drop the pageable copy
            self._decoded.put(key, placed)
        return placed


def load_data(spec: DataSpec) -> ImageData:
    if spec.kind == "digits":
        data = load_digits(spec)
    elif spec.kind == "imagefolder":
        data = load_imagefolder(spec)
    else:
        raise ValueError(f"unknown data kind {spec.kind!r} (expected 'digits' or 'imagefolder')")
    logger.info(
        "decoded %s data: %d train / %d val images, %d classes, %dpx",
        spec.kind,
        len(data.train),
        len(data.val),
        data.num_classes,
        spec.image_size,
    )
    return data


def stratified_split(
    labels: Sequence[int], val_fraction: float, seed: int
) -> tuple[Tensor, Tensor]:
    """Sorted (train, val) index tensors, about ``val_fraction`` of each class in val."""
    labels_t = torch.as_tensor(labels, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for cls in torch.unique(labels_t).tolist():
        idx = torch.nonzero(labels_t == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = min(round(len(idx) * val_fraction), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    val_idx = torch.cat(val).sort().values
    if len(val_idx) == 0:
        raise ValueError(f"val_fraction={val_fraction} leaves no validation images")
    return torch.cat(train).sort().values, val_idx


def load_digits(spec: DataSpec) -> ImageData:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images, targets = bunch.images, bunch.target
    classes = spec.classes or tuple(range(10))
    unknown = set(classes) - set(range(10))
    if unknown:
        raise ValueError(f"digits classes must be in 0..9, got {sorted(unknown)}")
    keep = np.isin(targets, classes)
    relabel = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([relabel[int(t)] for t in targets[keep]], dtype=torch.int64)
    pixels = torch.from_numpy(images[keep] / 16.0).float().unsqueeze(1)
    pixels = F.interpolate(pixels, size=spec.image_size, mode="bilinear", align_corners=False)
    pixels = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    # Pad with background so a random crop of image_size is a small translation
    # and the center crop is the digit itself.
    total = spec.stored_size - spec.image_size
    before = total // 2
    pixels = F.pad(pixels, (before, total - before, before, total - before)).contiguous()
    train_idx, val_idx = stratified_split(labels.tolist(), spec.val_fraction, SPLIT_SEED)
    return ImageData(
        train=Split(pixels[train_idx], labels[train_idx]),
        val=Split(pixels[val_idx], labels[val_idx]),
        class_names=tuple(str(c) for c in classes),
        image_size=spec.image_size,
        flip=False,  # a mirrored digit is another glyph
    )


def decode_image(path: str, size: int, interpolation: str) -> Tensor:
    """RGB uint8 [3, size, size]: shorter side resized to ``size`` (``interpolation``: bilinear
    or bicubic), then center-cropped. Raises :class:`~worker.folders.DatasetError` naming the
    file when it cannot be decoded."""
    rgb = open_rgb(path)
    rgb = TF.resize(rgb, size, interpolation=InterpolationMode(interpolation), antialias=True)
    return TF.pil_to_tensor(TF.center_crop(rgb, [size, size]))


def _decode_all(samples: Sequence[tuple[str, int]], spec: DataSpec) -> tuple[Split, int]:
    """(the decoded split at ``spec``'s stored size, how many undecodable files
    ``on_bad_image: skip`` left out)."""
    size = spec.stored_size

    def decode(path: str) -> Tensor | None:
        try:
            return decode_image(path, size, spec.interpolation)
        except DatasetError as exc:
            if spec.on_bad_image != "skip":
                raise
            logger.warning("skipped: %s", exc)
            return None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(decode, [path for path, _ in samples]))
    kept = [
        (image, label)
        for image, (_, label) in zip(decoded, samples, strict=True)
        if image is not None
    ]
    skipped = len(samples) - len(kept)
    if not kept:
        empty = torch.empty(0, 3, size, size, dtype=torch.uint8)
        return Split(empty, torch.empty(0, dtype=torch.int64)), skipped
    labels = torch.tensor([label for _, label in kept], dtype=torch.int64)
    return Split(torch.stack([image for image, _ in kept]), labels), skipped


def load_imagefolder(spec: DataSpec) -> ImageData:
    """Train and validation splits of ``spec.root`` (see :mod:`worker.folders` for the
    layouts); without a validation folder, validation is split from train by val_fraction.
    A ``test`` folder is never used here: :func:`load_test_split` reads it."""
    if spec.root is None:
        raise ValueError("data.root is required for kind 'imagefolder'")
    layout = find_layout(spec.root)
    if layout.val is not None:
        train, skipped = _decode_all(layout.train, spec)
        val, val_skipped = _decode_all(layout.val, spec)
        skipped += val_skipped
    else:
        everything, skipped = _decode_all(layout.train, spec)
        train_idx, val_idx = stratified_split(
            everything.labels.tolist(), spec.val_fraction, SPLIT_SEED
        )
        train = Split(everything.images[train_idx], everything.labels[train_idx])
        val = Split(everything.images[val_idx], everything.labels[val_idx])
    if skipped:
        logger.warning("%d undecodable image(s) under %s skipped", skipped, spec.root)
    return ImageData(train, val, layout.class_names, spec.image_size, flip=True, skipped=skipped)


def load_test_split(spec: DataSpec) -> Split | None:
    """The decoded ``test`` folder of an image-folder data set, or None when it has none."""
    if spec.kind != "imagefolder" or spec.root is None:
        return None
    layout = find_layout(spec.root)
    if layout.test is None:
        return None
    return _decode_all(layout.test, spec)[0]


def place(data: ImageData, device: torch.device) -> ImageData:
    """The data set on the GPU when it fits, else in pinned host memory."""
    nbytes = sum(t.numel() * t.element_size() for t in (data.train.images, data.val.images))
    free, _ = torch.cuda.mem_get_info(device)
    on_gpu = nbytes < GPU_MEMORY_FRACTION * free

    def move(t: Tensor) -> Tensor:
        return t.to(device) if on_gpu else t.pin_memory()

    where = str(device) if on_gpu else "pinned host memory"
    logger.info("data set (%.0f MiB) kept in %s", nbytes / 2**20, where)
    return ImageData(
        train=Split(move(data.train.images), move(data.train.labels)),
        val=Split(move(data.val.images), move(data.val.labels)),
        class_names=data.class_names,
        image_size=data.image_size,
        flip=data.flip,
        skipped=data.skipped,
    )


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's data order and augmentation."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def train_index_batches(n: int, batch_size: int, gen: torch.Generator) -> list[Tensor]:
    """Positions of one epoch's training batches in a fresh permutation of ``n`` items.

    The last incomplete batch is dropped (batch norm cannot train on one image and
    a fixed batch shape suits cudnn.benchmark and torch.compile), unless the whole
    split is smaller than one batch.
    """
    perm = torch.randperm(n, generator=gen)
    if n <= batch_size:
        return [perm]
    return list(perm[: n - n % batch_size].split(batch_size))


def iters_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


def crop_and_flip(
    images: Tensor, top: Tensor, left: Tensor, flip: Tensor | None, size: int
) -> Tensor:
    """Per-image crops (and optional mirrors) of a batch, gathered in one indexing op."""
    ar = torch.arange(size, device=images.device)
    rows = top[:, None] + ar
    cols = ar if flip is None else torch.where(flip[:, None], size - 1 - ar, ar)
    cols = left[:, None] + cols
    batch = torch.arange(images.shape[0], device=images.device)[:, None, None]
    return images[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class ImageBatches:
    """Normalised float batches of an :class:`ImageData` for one trial."""

    def __init__(
        self,
        data: ImageData,
        *,
        batch_size: int,
        augment: bool | str,
        seed: int,
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
        channels_last: bool = False,
    ) -> None:
        self.data = data
        self.batch_size = batch_size
        self.augment = policy_name(augment)  # worker.augment: true is flip_crop, false none
        self._per_image = image_policy(self.augment)
        self.seed = seed
        self.device = device
        self.channels_last = channels_last
        std_t = torch.tensor(std, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1).to(device)
        self._shift = (
            (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, -1, 1, 1).to(device)
        )

    @property
    def num_train(self) -> int:
        return len(self.data.train)

    def iters_per_epoch(self) -> int:
        return iters_per_epoch(self.num_train, self.batch_size)

    def train_batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        split = self.data.train
        gen = epoch_generator(self.seed, epoch)
        batches = train_index_batches(len(split), self.batch_size, gen)
        size = self.data.image_size
        if not crops(self.augment):
            for idx in batches:
                yield (
                    self._finish(self._center(self._take(split.images, idx))),
                    self._take(split.labels, idx),
                )
            return
        n = sum(len(b) for b in batches)
        span = split.images.shape[-1] - size + 1
        offsets = torch.randint(0, span, (n, 2), generator=gen).to(self.device)
        flips = (torch.rand(n, generator=gen) < 0.5).to(self.device) if self.data.flip else None
        start = 0
        for idx in batches:
            stop = start + len(idx)
            crop = crop_and_flip(
                self._take(split.images, idx),
                offsets[start:stop, 0],
                offsets[start:stop, 1],
                None if flips is None else flips[start:stop],
                size,
            )
            if self._per_image is not None:
                crop = apply_per_image(crop, self._per_image, gen)
            start = stop
            yield self._finish(crop), self._take(split.labels, idx)

    def val_batches(self, batch_size: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        yield from self.ordered_batches(self.data.val, batch_size or 2 * self.batch_size)

    def ordered_batches(self, split: Split, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Center crops of ``split`` in order: validation, feature extraction."""
        for idx in torch.arange(len(split)).split(batch_size):
            yield (
                self._finish(self._center(self._take(split.images, idx))),
                self._take(split.labels, idx),
            )

    def _take(self, src: Tensor, idx: Tensor) -> Tensor:
        """``src[idx]`` on the training device; an asynchronous copy from pinned memory."""
        if src.device == self.device:
            return src[idx.to(self.device, non_blocking=True)]
        if src.is_pinned():
            buf = torch.empty((len(idx), *src.shape[1:]), dtype=src.dtype, pin_memory=True)
            torch.index_select(src, 0, idx, out=buf)
            return buf.to(self.device, non_blocking=True)
        return src[idx].to(self.device)

    def _center(self, images: Tensor) -> Tensor:
        size = self.data.image_size
        top = (images.shape[-1] - size) // 2
        return images[:, :, top : top + size, top : top + size]

    def _finish(self, images: Tensor) -> Tensor:
        x = torch.addcmul(self._shift, images.float(), self._scale)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

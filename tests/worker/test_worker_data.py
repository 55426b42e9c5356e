from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from worker.data import (
    SPLIT_SEED,
    DataCache,
    DataSpec,
    ImageBatches,
    crop_and_flip,
    load_data,
    stratified_split,
)
from worker.folders import DatasetError

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def data_spec(**section: object) -> DataSpec:
    """A data section with the fields a test does not care about as the server fills them."""
    unset = {
        "root": None,
        "classes": None,
        "augment": True,
        "on_bad_image": "error",
        "interpolation": "bilinear",
    }
    size = int(section["image_size"])  # type: ignore[call-overload]
    return DataSpec.from_dict({**unset, "resize_size": round(size * 256 / 224), **section})


def digits_spec(**kw: object) -> DataSpec:
    return data_spec(**{"kind": "digits", "image_size": 16, "val_fraction": 0.25, **kw})


def sk_load_digits() -> Any:
    """scikit-learn's digits, imported here: at the top it cost every test process 1.5 CPU s
    of collection."""
    from sklearn.datasets import load_digits

    return load_digits()


def test_digits_class_subset_is_relabelled_in_sorted_order() -> None:
    data = load_data(digits_spec(classes=[7, 3]))
    targets = sk_load_digits().target
    assert data.class_names == ("3", "7")
    labels = torch.cat([data.train.labels, data.val.labels])
    assert sorted(labels.unique().tolist()) == [0, 1]
    assert (labels == 0).sum() == (targets == 3).sum()
    assert (labels == 1).sum() == (targets == 7).sum()
    stored = round(16 * 256 / 224)
    assert data.train.images.shape[1:] == (3, stored, stored)
    assert data.train.images.dtype == torch.uint8


def test_digits_images_are_the_upscaled_digits() -> None:
    data = load_data(digits_spec(classes=[0], val_fraction=0.5))
    bunch = sk_load_digits()
    originals = torch.from_numpy(bunch.images[bunch.target == 0] / 16).float().unsqueeze(1)
    upscaled = F.interpolate(originals, size=16, mode="bilinear", align_corners=False)
    expected = (upscaled.clamp(0, 1) * 255).round().to(torch.uint8)
    train_idx, _ = stratified_split([0] * len(expected), 0.5, SPLIT_SEED)
    pad = (data.train.images.shape[-1] - 16) // 2
    center = data.train.images[:, :, pad : pad + 16, pad : pad + 16]
    for channel in range(3):
        assert torch.equal(center[:, channel], expected[train_idx, 0])
    assert data.train.images[:, :, :pad].sum() == 0  # the padding is background


def test_digits_split_is_stratified_and_stable() -> None:
    a = load_data(digits_spec(classes=[0, 1, 2], val_fraction=0.3))
    b = load_data(digits_spec(classes=[0, 1, 2], val_fraction=0.3))
    assert torch.equal(a.train.images, b.train.images)
    assert torch.equal(a.val.labels, b.val.labels)
    for cls in range(3):
        n_val = int((a.val.labels == cls).sum())
        n_all = n_val + int((a.train.labels == cls).sum())
        assert abs(n_val - 0.3 * n_all) <= 1


def test_stratified_split_partitions_every_index() -> None:
    labels = [0] * 10 + [1] * 5 + [2] * 2
    train, val = stratified_split(labels, 0.2, seed=3)
    assert sorted(train.tolist() + val.tolist()) == list(range(17))
    assert [labels[i] for i in val.tolist()].count(0) == 2
    assert torch.equal(val, stratified_split(labels, 0.2, seed=3)[1])
    with pytest.raises(ValueError, match="no validation"):
        stratified_split([0, 0, 1], 0.1, seed=0)


def test_cache_returns_the_same_object() -> None:
    cache = DataCache()
    first = cache.get(digits_spec(classes=[4, 5]))
    assert cache.get(digits_spec(classes=[5, 4])) is first
    # batch size and augmentation do not change the decoded tensors
    assert cache.get(digits_spec(classes=[4, 5], batch_size=64, augment=False)) is first
    assert cache.get(digits_spec(classes=[4, 5], image_size=20)) is not first


def write_png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


COLORS = {"cat": (250, 10, 10), "dog": (10, 10, 250)}


def test_imagefolder_with_train_and_val(tmp_path: Path) -> None:
    for split, count in (("train", 3), ("val", 2)):
        for name, color in COLORS.items():
            for i in range(count):
                write_png(tmp_path / split / name / f"{i}.png", color)
    data = load_data(
        data_spec(kind="imagefolder", root=str(tmp_path), image_size=16, val_fraction=0.5)
    )  # fmt: skip
    assert data.class_names == ("cat", "dog")
    assert data.flip
    assert data.train.images.shape == (6, 3, 18, 18)
    assert data.val.labels.tolist() == [0, 0, 1, 1]
    # solid colours survive decoding: cat red, dog blue
    for split in (data.train, data.val):
        red = split.images[:, 0].float().mean(dim=(1, 2))
        assert ((red > 200) == (split.labels == 0)).all()


def test_imagefolder_single_folder_is_split(tmp_path: Path) -> None:
    for name, color in COLORS.items():
        for i in range(5):
            write_png(tmp_path / name / f"{i}.png", color, size=(20, 50))
    spec = {"kind": "imagefolder", "root": str(tmp_path), "image_size": 16}
    data = load_data(data_spec(**spec, val_fraction=0.4))
    assert len(data.train) == 6
    assert sorted(data.val.labels.tolist()) == [0, 0, 1, 1]
    again = load_data(data_spec(**spec, val_fraction=0.4))
    assert torch.equal(data.val.images, again.val.images)


def test_imagefolder_without_classes_fails(tmp_path: Path) -> None:
    spec = {"kind": "imagefolder", "root": str(tmp_path), "image_size": 16}
    with pytest.raises(DatasetError, match="0 class folder"):
        load_data(data_spec(**spec, val_fraction=0.4))


def test_crop_and_flip_matches_slicing() -> None:
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).view(2, 3, 6, 6)
    top, left = torch.tensor([0, 2]), torch.tensor([1, 0])
    out = crop_and_flip(images, top, left, torch.tensor([False, True]), 4)
    assert torch.equal(out[0], images[0, :, 0:4, 1:5])
    assert torch.equal(out[1], images[1, :, 2:6, 0:4].flip(-1))


def batches(augment: bool, seed: int = 0, classes: list[int] | None = None) -> ImageBatches:
    data = DataCache().get(digits_spec(classes=classes or [0, 1]))
    return ImageBatches(
        data, batch_size=16, augment=augment, seed=seed, device=torch.device("cpu"),
        mean=MEAN, std=STD,
    )  # fmt: skip


def test_batch_order_depends_only_on_seed_and_epoch() -> None:
    source = batches(augment=True)
    epoch0 = list(source.train_batches(0))
    assert len(epoch0) == source.iters_per_epoch() == len(source.data.train) // 16
    again = list(batches(augment=True).train_batches(0))
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(epoch0, again, strict=True)
    )
    epoch1 = next(iter(source.train_batches(1)))
    other_seed = next(iter(batches(augment=True, seed=1).train_batches(0)))
    assert not torch.equal(epoch0[0][0], epoch1[0])
    assert not torch.equal(epoch0[0][0], other_seed[0])
    assert epoch0[0][0].shape == (16, 3, 16, 16)
    assert epoch0[0][0].dtype == torch.float32


def test_augmentation_is_random_crops_and_val_is_center_crops() -> None:
    plain = list(batches(augment=False).train_batches(0))
    augmented = list(batches(augment=True).train_batches(0))
    # same order and labels; images differ only by the crop
    assert all(torch.equal(a[1], b[1]) for a, b in zip(plain, augmented, strict=True))
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(plain, augmented, strict=True))
    source = batches(augment=False)
    x, y = next(iter(source.val_batches()))
    pad = (source.data.val.images.shape[-1] - 16) // 2
    raw = source.data.val.images[: len(y), :, pad : pad + 16, pad : pad + 16].float() / 255
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(x * std + mean, raw, atol=1e-5)
    assert sum(len(y) for _, y in source.val_batches()) == len(source.data.val)


def test_small_split_still_gives_one_batch() -> None:
    source = ImageBatches(
        DataCache().get(digits_spec(classes=[0], val_fraction=0.9)),
        batch_size=64, augment=True, seed=0, device=torch.device("cpu"), mean=MEAN, std=STD,
    )  # fmt: skip
    (x, y), *rest = list(source.train_batches(0))
    assert not rest
    assert len(y) == len(source.data.train) < 64
    assert np.isfinite(x.numpy()).all()

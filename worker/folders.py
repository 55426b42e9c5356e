"""How an image-folder data set is laid out on disk, found and checked before decoding.

People lay data sets out as ``root/<class>/...`` or with split folders
``root/train``, ``root/val`` (or ``valid``, ``validation``) and ``root/test``, in any
case. A root holding split folders is never read as classes. Hidden entries
(``.ipynb_checkpoints``, ``.DS_Store``) are ignored everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

SPLIT_NAMES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


class DatasetError(ValueError):
    """The data set itself is wrong (layout, classes, a corrupt file): every worker would
    fail the same way. A missing root is an environment fault and raises FileNotFoundError."""


@dataclass(frozen=True)
class Layout:
    """The image files of each split and the class names (sorted), labels indexing them."""

    class_names: tuple[str, ...]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]] | None  # None: split from train by val_fraction
    test: list[tuple[str, int]] | None


def _visible_dirs(folder: Path) -> dict[str, Path]:
    return {
        e.name: Path(e.path)
        for e in os.scandir(folder)
        if e.is_dir() and not e.name.startswith(".")
    }


def _is_image(root: Path, path: str) -> bool:
    parts = Path(path).relative_to(root).parts
    return path.lower().endswith(IMG_EXTENSIONS) and not any(p.startswith(".") for p in parts)


def _samples(folder: Path, class_names: tuple[str, ...]) -> list[tuple[str, int]]:
    class_to_idx = {name: i for i, name in enumerate(class_names)}
    return make_dataset(
        str(folder), class_to_idx, is_valid_file=lambda p: _is_image(folder, p), allow_empty=True
    )


def _classes(folder: Path) -> tuple[str, ...]:
    names = tuple(sorted(_visible_dirs(folder)))
    if len(names) < 2:
        raise DatasetError(
            f"{folder} holds {len(names)} class folder(s) {list(names)}; at least 2 are needed"
        )
    return names


def find_layout(root: str | Path) -> Layout:
    """The splits and classes under ``root``. Raises FileNotFoundError when it is missing and
    :class:`DatasetError` when its layout cannot be trained on."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} is not a directory on this machine")
    splits: dict[str, Path] = {}
    for name, path in _visible_dirs(root).items():
        split = SPLIT_NAMES.get(name.lower())
        if split is None:
            continue
        if split in splits:
            raise DatasetError(f"{root} has two {split} folders: {splits[split].name}, {name}")
        splits[split] = path
    if not splits:
        names = _classes(root)
        return Layout(names, _check_nonempty(root, _samples(root, names), names), None, None)
    if "train" not in splits:
        raise DatasetError(f"{root} has split folders {sorted(splits)} but no train folder")
    names = _classes(splits["train"])
    train = _check_nonempty(splits["train"], _samples(splits["train"], names), names)
    val = test = None
    if "val" in splits:
        _same_classes(splits["train"], splits["val"], names)
        val = _check_nonempty(splits["val"], _samples(splits["val"], names), names)
    if "test" in splits:
        _same_classes(splits["train"], splits["test"], names)
        test = _samples(splits["test"], names)
    return Layout(names, train, val, test)


def _same_classes(train: Path, other: Path, names: tuple[str, ...]) -> None:
    theirs = set(_visible_dirs(other))
    missing, unknown = sorted(set(names) - theirs), sorted(theirs - set(names))
    if missing or unknown:
        raise DatasetError(
            f"{train.name} and {other.name} must have the same classes: "
            f"missing from {other.name}: {missing}; missing from {train.name}: {unknown}"
        )


def _check_nonempty(
    folder: Path, samples: list[tuple[str, int]], names: tuple[str, ...]
) -> list[tuple[str, int]]:
    counts = np.bincount([label for _, label in samples], minlength=len(names))
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DatasetError(f"no images in class folder(s) {empty} of {folder}")
    return samples


def open_rgb(path: str) -> Image.Image:
    """The image as 8-bit RGB, EXIF orientation applied; 16-bit grey scaled, not clipped.
    Raises :class:`DatasetError` naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                # 16-bit grey: keep the top 8 bits (convert("RGB") would saturate to white)
                pixels = np.asarray(img, dtype=np.uint32) >> 8
                img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "L")
            elif img.mode in ("P", "PA", "LA"):
                img = img.convert("RGBA")  # through RGBA so a palette's transparency is kept
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"cannot decode image {path}: {exc}") from exc

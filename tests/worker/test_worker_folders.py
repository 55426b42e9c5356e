"""Image-folder layouts as people make them, and the faults they hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worker.data import DataCache, DataSpec, load_data, load_test_split
from worker.folders import DatasetError, find_layout, open_rgb

COLORS = {"cat": (200, 30, 30), "dog": (30, 200, 30)}


def write_image(path: Path, color: tuple[int, int, int], fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(len(str(path))).integers(0, 20, (24, 32, 3))
    pixels = (np.array(color) + noise).clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, fmt)


def make_split(folder: Path, n: int = 3, classes: dict[str, tuple[int, int, int]] = COLORS) -> None:
    for name, color in classes.items():
        for i in range(n):
            fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
            write_image(folder / name / f"{i}.{ext}", color, fmt)


def spec(root: Path, **kw: object) -> DataSpec:
    base = {"kind": "imagefolder", "root": str(root), "image_size": 16, "resize_size": 18,
            "interpolation": "bilinear", "val_fraction": 0.34,
            "classes": None, "augment": True, "on_bad_image": "error"}  # fmt: skip
    return DataSpec.from_dict({**base, **kw})


@pytest.mark.parametrize("val_name", ["val", "valid", "Validation", "VAL"])
def test_validation_folder_names_are_splits_not_classes(tmp_path: Path, val_name: str) -> None:
    make_split(tmp_path / "Train")
    make_split(tmp_path / val_name, n=2)
    make_split(tmp_path / "test", n=1)
    data = load_data(spec(tmp_path))
    assert data.class_names == ("cat", "dog")
    assert (len(data.train), len(data.val)) == (6, 4)
    test = load_test_split(spec(tmp_path))
    assert test is not None and test.labels.tolist() == [0, 1]


def test_train_and_test_only_splits_validation_from_train(tmp_path: Path) -> None:
    make_split(tmp_path / "train")
    make_split(tmp_path / "test", n=2)
    data = load_data(spec(tmp_path))
    assert data.class_names == ("cat", "dog")
    assert (len(data.train), len(data.val)) == (4, 2)  # test never joins selection
    assert load_test_split(spec(tmp_path)) is not None


def test_hidden_entries_are_ignored(tmp_path: Path) -> None:
    make_split(tmp_path / "train")
    make_split(tmp_path / "train" / ".ipynb_checkpoints", n=1)
    write_image(tmp_path / "train" / "cat" / ".hidden.png", (0, 0, 0))
    (tmp_path / ".cache").mkdir()
    layout = find_layout(tmp_path)
    assert layout.class_names == ("cat", "dog")
    assert len(layout.train) == 6
    assert load_test_split(spec(tmp_path)) is None


def test_one_class_is_refused(tmp_path: Path) -> None:
    make_split(tmp_path / "train", classes={"cat": COLORS["cat"]})
    with pytest.raises(DatasetError, match="at least 2"):
        find_layout(tmp_path)


def test_class_mismatch_names_both_sides(tmp_path: Path) -> None:
    make_split(tmp_path / "train")
    make_split(tmp_path / "val", classes={"Cat": COLORS["cat"], "dog": COLORS["dog"]})
    with pytest.raises(
        DatasetError, match=r"missing from val: \['cat'\].*missing from train: \['Cat'\]"
    ):
        find_layout(tmp_path)


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    make_split(tmp_path / "train")
    make_split(tmp_path / "val", classes={"cat": COLORS["cat"]})
    (tmp_path / "val" / "dog").mkdir()
    with pytest.raises(DatasetError, match=r"no images in class folder\(s\) \['dog'\]"):
        find_layout(tmp_path)


def test_missing_root_is_an_environment_fault(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        find_layout(tmp_path / "absent")
    assert not isinstance(info.value, DatasetError)


def test_truncated_jpeg_is_named_and_remembered(tmp_path: Path) -> None:
    make_split(tmp_path)
    bad = tmp_path / "dog" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    cache = DataCache()
    with pytest.raises(DatasetError, match="1.jpg"):
        cache.get(spec(tmp_path))
    make_split(tmp_path)  # repaired on disk, but the cache remembers: no second decode
    with pytest.raises(DatasetError, match="1.jpg"):
        cache.get(spec(tmp_path))
    assert len(load_data(spec(tmp_path)).train) == 4


def test_16_bit_png_keeps_its_grey_levels(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 0x8000, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = np.asarray(open_rgb(str(path)))
    assert pixels.shape == (8, 8, 3) and (pixels == 0x80).all()


def test_palette_png_is_converted(tmp_path: Path) -> None:
    path = tmp_path / "pal.png"
    Image.new("RGB", (8, 8), (10, 120, 250)).convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    assert Image.open(path).mode == "P"
    assert np.asarray(open_rgb(str(path)))[0, 0].tolist() == [10, 120, 250]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (40, 20), (90, 90, 90)).save(path, exif=exif)
    assert open_rgb(str(path)).size == (20, 40)


def test_skip_leaves_bad_files_out_and_counts_them(tmp_path: Path) -> None:
    make_split(tmp_path / "train")
    make_split(tmp_path / "val", n=2)
    for bad in (tmp_path / "train" / "cat" / "1.jpg", tmp_path / "val" / "dog" / "0.png"):
        bad.write_bytes(b"not an image")
    data = load_data(spec(tmp_path, on_bad_image="skip"))
    assert (len(data.train), len(data.val), data.skipped) == (5, 3, 2)
    with pytest.raises(DatasetError, match=r"cat/1\.jpg"):
        load_data(spec(tmp_path))

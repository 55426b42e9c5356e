"""The architectures a study may name, checked at creation without importing torch.

`architectures.json` is torchvision's table as the worker sees it (`python -m
worker.architectures` writes it; `tests/worker/test_worker_architectures.py` keeps it equal
to the installed torchvision)."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.spec import StudySpec

TABLE = Path(__file__).with_name("architectures.json")


@functools.cache
def architectures() -> dict[str, dict[str, Any]]:
    return json.loads(TABLE.read_text())


def check_model(spec: StudySpec) -> Iterator[tuple[str, str]]:
    """(field, reason) for each thing about the model a worker would only find per trial."""
    table = architectures()
    arch = spec.model.arch
    entry = table.get(arch)
    if entry is None:
        yield (
            "model.arch",
            (
                f"unknown architecture {arch!r}: a torchvision classification model with a linear "
                f"head is needed ({', '.join(sorted(table))})"
            ),
        )
        return
    weights = spec.model.weights
    if weights not in (None, "DEFAULT") and weights not in entry["weights"]:
        yield (
            "model.weights",
            (f"{arch} has no weights {weights!r}; known: DEFAULT, {', '.join(entry['weights'])}"),
        )
    size, smallest = spec.data.image_size, entry["min_image_size"]
    if size < smallest:
        yield "data.image_size", f"{arch} needs images of at least {smallest} px, not {size}"
    multiple = entry.get("image_size_multiple_of")
    if multiple and size % multiple:
        yield "data.image_size", f"{arch} needs a multiple of {multiple} px, not {size}"


def with_preprocessing(spec: StudySpec) -> StudySpec:
    """`spec` with its data's image_size, resize_size and interpolation decided: what the spec
    gives, else the pretrained weights' own preset, else 224 px, x 256/224 and bilinear (as
    before presets). The worker receives the decided values and keeps no defaults."""
    data = spec.data
    preset = _preset(spec)
    crop = data.image_size or (preset["crop"] if preset else 224)
    if data.resize_size is not None:
        resize = data.resize_size
    elif preset and data.image_size is None:
        resize = preset["resize"]
    else:
        resize = max(crop, round(crop * 256 / 224))
    interpolation = data.interpolation or (preset["interpolation"] if preset else "bilinear")
    decided = data.model_copy(
        update={
            "image_size": crop,
            "resize_size": max(resize, crop),
            "interpolation": interpolation,
        }
    )
    return spec.model_copy(update={"data": decided})


def _preset(spec: StudySpec) -> dict[str, Any] | None:
    entry = architectures().get(spec.model.arch)
    if entry is None or spec.model.weights is None:
        return None
    name = entry["default_weights"] if spec.model.weights == "DEFAULT" else spec.model.weights
    return entry["presets"].get(name)

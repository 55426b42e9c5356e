"""The architectures hpsearch fine-tunes, as torchvision has them: every classification model
whose head is an ``nn.Linear`` (the head a study replaces), with its weights names and the
smallest image it accepts. The server validates specs against the copy of this table shipped
in ``service/architectures.json`` (the server never imports torch); a worker test keeps the
two equal. Regenerate after a torchvision upgrade:

    python -m worker.architectures > service/architectures.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
import torchvision
from torch import nn

from worker.models import find_head

# Heads that are not a linear layer (squeezenet ends in a 1x1 convolution): nothing to replace.
NO_LINEAR_HEAD = ("squeezenet1_0", "squeezenet1_1")


def supported() -> dict[str, dict[str, Any]]:
    """{arch: {weights: [names], default_weights, presets: {weights: {crop, resize,
    interpolation}}, min_image_size: px[, image_size_multiple_of: px]}}: each weights' own
    evaluation preset (torchvision's ``weights.transforms()``), the spec's defaults."""
    table: dict[str, dict[str, Any]] = {}
    for arch in torchvision.models.list_models(module=torchvision.models):
        if arch in NO_LINEAR_HEAD:
            continue
        weights = list(torchvision.models.get_model_weights(arch))
        entry: dict[str, Any] = {
            "weights": [w.name for w in weights],
            "default_weights": torchvision.models.get_model_weights(arch).DEFAULT.name,
            "presets": {w.name: _preset(w) for w in weights},
            "min_image_size": max(max(w.meta["min_size"]) for w in weights),
        }
        if arch.startswith("vit_"):
            # The worker builds ViTs for the study's image size (position embeddings are
            # interpolated): any multiple of the patch size.
            patch = int(arch.rsplit("_", 1)[1])
            entry.update(min_image_size=patch, image_size_multiple_of=patch)
        table[arch] = entry
    return table


def _preset(weights: Any) -> dict[str, Any]:
    transforms = weights.transforms()
    return {
        "crop": int(transforms.crop_size[0]),
        "resize": int(transforms.resize_size[0]),
        "interpolation": transforms.interpolation.value,  # "bilinear", "bicubic"
    }


def build_on_meta(arch: str) -> nn.Module:
    """The architecture without memory or weights, to inspect its modules."""
    kwargs = (
        {"aux_logits": True, "init_weights": False} if arch in ("googlenet", "inception_v3") else {}
    )
    with torch.device("meta"):
        return torchvision.models.get_model(arch, weights=None, **kwargs)


def has_linear_head(arch: str) -> bool:
    try:
        find_head(build_on_meta(arch))
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    json.dump(supported(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")

"""Training augmentation policies (``data.augment``), on batches of uint8 image tensors.

``flip_crop`` is the random crop and horizontal flip :class:`worker.data.ImageBatches` cuts in
one indexing op; ``trivialaugment`` and ``randaugment`` apply torchvision's transforms v2
policy to each image after that crop. A policy's randomness comes from a seed drawn from the
epoch's generator, so a resumed run sees the same augmented batches as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.transforms import v2

POLICIES = ("none", "flip_crop", "trivialaugment", "randaugment")


def policy_name(value: bool | str) -> str:
    """A policy by name; ``True`` and ``False`` (the spec's old ``augment``) are flip_crop and
    none. Raises ValueError for an unknown name."""
    if isinstance(value, bool):
        return "flip_crop" if value else "none"
    if value not in POLICIES:
        raise ValueError(f"unknown augment policy {value!r} (known: {', '.join(POLICIES)})")
    return value


def crops(policy: str) -> bool:
    """Whether the policy crops and flips at random (every policy but none does)."""
    return policy != "none"


def image_policy(policy: str) -> Callable[[Tensor], Tensor] | None:
    """The per-image transform applied after the crop, or None (none and flip_crop)."""
    if policy == "trivialaugment":
        return v2.TrivialAugmentWide()
    if policy == "randaugment":
        return v2.RandAugment()
    return None


def apply_per_image(
    images: Tensor, transform: Callable[[Tensor], Tensor], gen: torch.Generator
) -> Tensor:
    """``transform`` applied to each uint8 image of the batch ``[B, 3, H, W]``, its random
    choices drawn from a seed taken from ``gen`` (the process's RNG state is left as it was)."""
    seed = int(torch.randint(0, 2**62, (), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([transform(image) for image in images])

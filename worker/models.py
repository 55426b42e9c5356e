"""Torchvision classification models with pretrained weights and a new head.

Weights never download silently into an unknown place: a torchvision weights name
is looked up as ``$TORCH_HOME/hub/checkpoints/<basename of weights.url>``, the
standard torch hub cache; if the file is missing, one download into that folder is
tried, and when that fails :class:`WeightsUnavailable` says which file to put where.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from worker.data import BoundedCache

logger = logging.getLogger(__name__)

_GLOBAL_RNG = threading.Lock()  # guards torch's process-wide generator while models are built


def seed_process_rng(seed: int) -> None:
    """Seed torch's process-wide generator (dropout draws from it), never while another
    trial in this process is building its model from it."""
    with _GLOBAL_RNG:
        torch.manual_seed(seed)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

StateDict = dict[str, Tensor]

# Old-style densenet keys ('denselayer1.norm.1.weight') as in torchvision's files.
_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
# Auxiliary classifiers of googlenet/inception: loaded if present, then removed.
_AUX_PREFIXES = ("AuxLogits.", "aux1.", "aux2.")


class WeightsUnavailable(RuntimeError):
    """Pretrained weights are neither on disk nor downloadable."""


@dataclass(frozen=True)
class ModelSpec:
    """The ``model`` section of a study spec, as the server resolved it."""

    arch: str
    weights: str | None  # a torchvision weights name
    weights_path: str | None
    freeze_backbone: bool

    @classmethod
    def from_dict(cls, model: Mapping[str, Any]) -> ModelSpec:
        """From the section's JSON, every field present; the path resolved on this machine."""
        path = model["weights_path"]
        return cls(
            arch=str(model["arch"]),
            weights=model["weights"] or None,
            weights_path=str(Path(path).expanduser().resolve()) if path else None,
            freeze_backbone=bool(model["freeze_backbone"]),
        )

    @property
    def pretrained(self) -> bool:
        return bool(self.weights_path or self.weights)


class WeightsCache:
    """Pretrained state dicts loaded by this process (CPU tensors, never modified)."""

    def __init__(self, capacity: int = 4, *, allow_download: bool = True) -> None:
        self.allow_download = allow_download
        self._items: BoundedCache[Hashable, StateDict] = BoundedCache(capacity)

    def key(self, spec: ModelSpec) -> Hashable | None:
        """What identifies the weights of ``spec`` (a file as it is now); None without weights."""
        source = self._source(spec)
        return None if source is None else source[0]

    def state_dict(self, spec: ModelSpec) -> StateDict | None:
        """The pretrained state dict of ``spec``; None when it names no weights."""
        source = self._source(spec)
        return None if source is None else self._items.get_or_create(*source)

    def _source(self, spec: ModelSpec) -> tuple[Hashable, Callable[[], StateDict]] | None:
        """(key, loader) of the weights of ``spec``."""
        if spec.weights_path:
            path = Path(spec.weights_path)
            if not path.is_file():
                raise WeightsUnavailable(f"weights_path {path} does not exist")
            stat = path.stat()
            key = ("path", str(path), stat.st_mtime_ns, stat.st_size)
            return key, lambda: load_weights_file(path)
        if spec.weights:
            weights = resolve_weights(spec.arch, spec.weights)
            key = ("torchvision", spec.arch, weights.url)
            return key, lambda: load_torchvision_weights(weights, self.allow_download)
        return None


class TemplateCache(BoundedCache[Hashable, tuple[nn.Module, str]]):
    """Pretrained modules built by this process, with their old head, as (module, head name).

    Trials get deep copies, several times faster than a new build (resnet18 on a CPU: ~24
    against ~150 ms); a template itself is never handed out, so nothing a trial does reaches
    the next one. Each takes as much memory as its weights, hence the small capacity (2).
    """


def resolve_weights(arch: str, name: str) -> WeightsEnum:
    enum = torchvision.models.get_model_weights(arch)
    try:
        return enum[name]
    except KeyError:
        names = ", ".join(["DEFAULT", *enum.__members__])
        raise ValueError(f"{arch} has no weights {name!r}; known: {names}") from None


def weights_file(weights: WeightsEnum) -> Path:
    """Where torch hub keeps (and this module looks for) the file of ``weights``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def load_torchvision_weights(weights: WeightsEnum, allow_download: bool = True) -> StateDict:
    path = weights_file(weights)
    if path.is_file():
        logger.info("loading pretrained weights %s", path)
        return torch.load(path, map_location="cpu", weights_only=True)
    problem = "downloads are disabled"
    if allow_download:
        try:
            logger.info("%s not found; downloading %s", path, weights.url)
            return torch.hub.load_state_dict_from_url(
                weights.url,
                model_dir=str(path.parent),
                map_location="cpu",
                progress=False,
                weights_only=True,
                file_name=path.name,
            )
        except Exception as exc:  # any failure means: not available here
            problem = f"the download failed ({exc})"
    raise WeightsUnavailable(
        f"pretrained weights file {path.name} is not in {path.parent} and {problem}. "
        f"Download {weights.url} and put it in {path.parent}/ "
        f"(the folder is $TORCH_HOME/hub/checkpoints)."
    )


def load_weights_file(path: Path) -> StateDict:
    """A state dict saved with torch.save, plain or under a 'model'/'state_dict' key."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    return obj


def find_head(model: nn.Module) -> str:
    """Name of the classifier head: the last ``nn.Linear`` of the model."""
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linear:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier head")
    return linear[-1]


def _builder_kwargs(arch: str, weights: WeightsEnum | None, image_size: int) -> dict[str, Any]:
    """Constructor arguments torchvision's builder would set for these weights."""
    kwargs: dict[str, Any] = {}
    if arch in ("googlenet", "inception_v3"):
        kwargs = {"aux_logits": True, "init_weights": weights is None}
        if weights is not None:
            kwargs["transform_input"] = True
    elif arch.startswith("vit_"):
        kwargs["image_size"] = image_size
    elif arch.startswith("maxvit_"):
        kwargs["input_size"] = (image_size, image_size)
    return kwargs


def _clean_keys(state: StateDict, model: nn.Module, head: str) -> StateDict:
    """Drop wrapper prefixes, rename old densenet keys, resize ViT position embeddings
    and drop head tensors whose shape differs from the model's."""
    own = model.state_dict()
    cleaned: StateDict = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        match = _DENSENET_KEY.match(key)
        cleaned[match.group(1) + match.group(2) if match else key] = value
    pos = cleaned.get("encoder.pos_embedding")
    if pos is not None and pos.shape != own["encoder.pos_embedding"].shape:
        from torchvision.models.vision_transformer import interpolate_embeddings

        cleaned = interpolate_embeddings(model.image_size, model.patch_size, cleaned)
    for key in [k for k in cleaned if k.startswith(head + ".")]:
        if key in own and own[key].shape != cleaned[key].shape:
            del cleaned[key]
    return cleaned


def load_pretrained(model: nn.Module, state: StateDict, head: str) -> None:
    result = model.load_state_dict(_clean_keys(state, model, head), strict=False)
    optional = (head + ".", *_AUX_PREFIXES)
    missing = [k for k in result.missing_keys if not k.startswith(optional)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"pretrained weights do not fit {type(model).__name__}: "
            f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )


def _drop_aux_heads(model: nn.Module) -> None:
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for name in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, name):
                setattr(model, name, None)


def replace_head(model: nn.Module, head: str, num_classes: int, seed: int) -> nn.Linear:
    """Put a new ``nn.Linear`` head for ``num_classes``, initialised from ``seed``."""
    old = model.get_submodule(head)
    # Made on "meta" and filled below, so that it draws nothing from the process-wide generator.
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None, device="meta")
    new = new.to_empty(device="cpu")
    # nn.Linear's own init (uniform in +-1/sqrt(fan_in)), from a generator of the trial's own:
    # the process-wide one is shared with trials running beside this one.
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(old.in_features)
    with torch.no_grad():
        new.weight.uniform_(-bound, bound, generator=generator)
        if new.bias is not None:
            new.bias.uniform_(-bound, bound, generator=generator)
    parent, _, attr = head.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)
    return new


@dataclass
class Network:
    """A model whose head is ``module.<head_name>``; the rest is the backbone."""

    module: nn.Module
    head_name: str
    frozen: bool

    @property
    def head(self) -> nn.Linear:
        return self.module.get_submodule(self.head_name)

    def train_mode(self) -> None:
        """Train mode; a frozen backbone stays in eval mode (batch norm statistics fixed)."""
        if self.frozen:
            self.module.eval()
            self.head.train()
        else:
            self.module.train()

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.module.parameters() if p.requires_grad)


def build_network(
    spec: ModelSpec,
    *,
    num_classes: int,
    image_size: int,
    seed: int,
    cache: WeightsCache,
    templates: TemplateCache | None = None,
) -> Network:
    """The model of ``spec`` with its pretrained weights and a fresh head (on the CPU).

    With ``templates``, a model with pretrained weights is a deep copy of one built once per
    process, equal to a fresh build: the weights overwrite every tensor the seed initialised
    but the head's (``load_pretrained`` refuses files that leave any other unset).
    """
    weights_key = cache.key(spec)
    weights = resolve_weights(spec.arch, spec.weights) if spec.weights else None
    kwargs = _builder_kwargs(spec.arch, weights, image_size)
    if templates is None or weights_key is None:
        model, head = _seeded_build(spec, cache.state_dict(spec), kwargs, seed)
    else:
        # all the module depends on before its head is replaced: not the seed, nor the head
        key = (spec.arch, weights_key, tuple(sorted(kwargs.items())))
        template, head = templates.get_or_create(
            key, lambda: _seeded_build(spec, cache.state_dict(spec), kwargs, seed)
        )
        model = copy.deepcopy(template)  # the template stays in the cache, never changed
    replace_head(model, head, num_classes, seed)
    if spec.freeze_backbone:
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(head + "."))
    return Network(model, head, spec.freeze_backbone)


def _seeded_build(
    spec: ModelSpec, state: StateDict | None, kwargs: dict[str, Any], seed: int
) -> tuple[nn.Module, str]:
    """(model with ``state`` loaded and auxiliary heads removed, name of its head)."""
    # torchvision initialises from torch's process-wide generator; trials side by side in one
    # process (--trials-per-gpu) take turns, so a model without pretrained weights is the
    # same for the same seed whatever runs beside it.
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(spec.arch, weights=None, **kwargs)
    head = find_head(model)
    if state is not None:
        load_pretrained(model, state, head)
    _drop_aux_heads(model)
    return model, head


def normalization(spec: ModelSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the pretrained weights expect; ImageNet's when there is no name."""
    if spec.weights:
        preset = resolve_weights(spec.arch, spec.weights).transforms()
        mean, std = getattr(preset, "mean", None), getattr(preset, "std", None)
        if mean is not None and std is not None:
            return tuple(mean), tuple(std)
    return IMAGENET_MEAN, IMAGENET_STD

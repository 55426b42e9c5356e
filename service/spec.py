"""The study spec: the one document users POST or `hpsearch submit`, validated completely.

Every check names the field path and the reason; nothing in a spec is executed or imported."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
)

from service import keys
from service.optimizers import AshaSpec, MedianSpec, PrunerSpec, SamplerSpec, TPESpec
from service.search_space import (
    COMMON_RECIPE,
    HYPERPARAMETERS,
    CategoricalParam,
    SearchSpace,
)

NAME_PATTERN = keys.STUDY_NAME_PATTERN


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    arch: str = Field("resnet50", pattern=r"^[a-z][a-z0-9_]{0,63}$")
    weights: str | None = Field(
        "DEFAULT", pattern=r"^[A-Z][A-Z0-9_]{0,63}$", description="torchvision weights name"
    )
    weights_path: str | None = Field(None, min_length=1, max_length=4096)
    freeze_backbone: bool = False


AugmentPolicy = Literal["none", "flip_crop", "trivialaugment", "randaugment"]


def _augment_policy(value: Any) -> Any:
    """Today's ``augment: true/false`` keeps working: true is flip_crop, false none."""
    if value is True:
        return "flip_crop"
    if value is False:
        return "none"
    return value


class _DataCommon(_Strict):
    # Unset, the three preprocessing sizes are the pretrained weights' own evaluation preset
    # (torchvision's weights.transforms()), resolved when the study is created.
    image_size: int | None = Field(
        None, ge=8, le=1024, description="Crop size; default: the weights' preset (224 without)"
    )
    resize_size: int | None = Field(
        None,
        ge=8,
        le=2048,
        description="Shorter side before cropping; default: the weights' preset with its crop, "
        "else image_size x 256/224",
    )
    interpolation: Literal["bilinear", "bicubic"] | None = Field(
        None, description="For resizing image folders; default: the weights' preset (bilinear)"
    )

    @field_validator("resize_size")
    @classmethod
    def _resize_holds_the_crop(cls, resize: int | None, info: ValidationInfo) -> int | None:
        crop = info.data.get("image_size")
        if resize is not None and crop is not None and resize < crop:
            raise ValueError(f"{resize} is below image_size {crop}: the crop would not fit")
        return resize

    batch_size: int = Field(64, ge=1, le=8192)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    augment: AugmentPolicy = Field(
        "flip_crop",
        description="Training augmentation: none, flip_crop (random crop and horizontal flip), "
        "trivialaugment or randaugment (each after flip_crop); true is flip_crop, false none",
    )
    on_bad_image: Literal["error", "skip"] = Field(
        "error", description="An undecodable image fails the trial, or is left out and counted"
    )

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_bool(cls, value: Any) -> Any:
        return _augment_policy(value)


class ImageFolderData(_DataCommon):
    """Image folders on the workers' disks: `root/train/<class>/...`, `root/val/<class>/...`."""

    kind: Literal["imagefolder"] = "imagefolder"
    root: str = Field(
        min_length=1, max_length=4096, description="root is required for kind imagefolder"
    )
    classes: None = Field(None, description="Only for kind digits")

    @field_validator("classes", mode="before")
    @classmethod
    def _no_classes(cls, classes: Any) -> None:
        if classes is not None:
            raise ValueError("classes selects digit classes and needs kind digits")
        return None


class DigitsData(_DataCommon):
    """scikit-learn's digits, shipped with the package (demos and tests)."""

    kind: Literal["digits"]
    root: None = Field(None, description="kind digits ships with scikit-learn and takes no root")
    classes: list[Annotated[int, Field(ge=0, le=9)]] | None = Field(
        None, min_length=2, max_length=10
    )

    @field_validator("root", mode="before")
    @classmethod
    def _no_root(cls, root: Any) -> None:
        if root is not None:
            raise ValueError("kind digits ships with scikit-learn and takes no root")
        return None

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: list[int] | None) -> list[int] | None:
        if classes is not None and len(set(classes)) != len(classes):
            raise ValueError("classes must be distinct")
        return classes


def _data_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("kind", "imagefolder")
    else:
        kind = getattr(value, "kind", None)
    return kind if kind in ("imagefolder", "digits") else None


# A union on `kind` (imagefolder when absent), so the OpenAPI document says which fields each
# kind takes: `root` is required for imagefolder only.
DataSpec = Annotated[
    Annotated[ImageFolderData, Tag("imagefolder")] | Annotated[DigitsData, Tag("digits")],
    Discriminator(
        _data_kind,
        custom_error_type="data_kind",
        custom_error_message=(
            "must be an object whose kind is 'imagefolder' (the default) or 'digits'"
        ),
    ),
]


class TrainingSpec(_Strict):
    epochs: int = Field(10, ge=1, le=10_000)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    compile: bool = False
    checkpoint_every: int = Field(
        1, ge=0, le=10_000, description="Epochs between checkpoints; 0: none"
    )
    norm_weight_decay: float | None = Field(
        0.0,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Weight decay of normalisation layers' weights and of every bias (as "
        "torchvision's references); null: the trial's weight_decay, like every other parameter",
    )


class Objective(_Strict):
    """What a trial's value is: the metric (and its direction) and which epoch gives it."""

    metric: Literal["val_loss", "val_accuracy"] = Field(
        "val_loss", description="val_loss is minimised, val_accuracy maximised"
    )
    epoch: Literal["last", "best"] = Field(
        "last",
        description="last: the final epoch's value; best: the best epoch's, whose "
        "weights are the ones kept",
    )

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        return "maximize" if self.metric == "val_accuracy" else "minimize"


class Baseline(_Strict):
    """The reference recipe; also the value of every hyperparameter absent from the space."""

    lr: float = COMMON_RECIPE["lr"]
    momentum: float = COMMON_RECIPE["momentum"]
    step_size: int = COMMON_RECIPE["step_size"]
    gamma: float = COMMON_RECIPE["gamma"]
    warmup_epochs: int = COMMON_RECIPE["warmup_epochs"]
    weight_decay: float = COMMON_RECIPE["weight_decay"]
    nesterov: bool = COMMON_RECIPE["nesterov"]
    head_lr_mult: float = COMMON_RECIPE["head_lr_mult"]
    label_smoothing: float = COMMON_RECIPE["label_smoothing"]
    batch_size: int | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _known_value(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.field_name is not None:
            why = HYPERPARAMETERS[info.field_name].check(value)
            if why is not None:
                raise ValueError(why)
        return value


class WarmStart(_Strict):
    """Start from what an earlier study learned (checked against the database at creation)."""

    study: str = Field(pattern=NAME_PATTERN, description="the earlier study")
    top_k: int = Field(
        5,
        ge=0,
        le=1000,
        description="its best complete configurations that fit this space, run first after "
        "the baseline (they count against n_trials)",
    )
    history: bool = Field(
        True,
        description="give its finished trials that fit this space to the sampler as prior "
        "evidence (they never count against n_trials nor become the best)",
    )


def _space_kind(value: Any) -> str:
    return "named" if isinstance(value, str) else "inline"


# A file in search_spaces/ by name, or an inline mapping. The tag picks the one branch to
# validate, so an error names what is wrong with the space rather than "not a string".
SearchSpaceRef = Annotated[
    Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$"), Tag("named")]
    | Annotated[SearchSpace, Tag("inline")],
    Discriminator(_space_kind),
]


LabelKey = Annotated[str, Field(pattern=keys.LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, Field(pattern=keys.LABEL_VALUE_PATTERN)]


class Scheduling(_Strict):
    """How the study shares the workers with the other studies (see service/scheduling.py)."""

    priority: int = Field(
        0,
        ge=-1_000_000,
        le=1_000_000,
        description="A claim goes to the highest priority that can take a trial",
    )
    weight: float = Field(
        1.0,
        gt=0,
        le=1_000_000,
        allow_inf_nan=False,
        description="Within one priority, the weighted fair share of the running trials",
    )
    max_concurrent_trials: int | None = Field(
        None, ge=1, le=100_000, description="At most this many of the study's trials run at once"
    )
    requires: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        max_length=keys.MAX_LABELS,
        description="Worker labels the study needs, e.g. {gpu: h100}; {}: any worker",
    )


class StudySpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    model: ModelSpec = ModelSpec()
    data: DataSpec
    training: TrainingSpec = TrainingSpec()
    objective: Objective = Objective()
    search_space: SearchSpaceRef = "sgd_steplr_warmup"
    sampler: SamplerSpec = TPESpec(name="tpe")
    pruner: PrunerSpec = MedianSpec(name="median", n_startup_trials=5, n_warmup_steps=1)
    n_trials: int = Field(50, ge=1, le=100_000)
    baseline: Baseline | Literal[False] = Baseline()
    warm_start: WarmStart | None = None
    scheduling: Scheduling = Scheduling()

    @field_validator("baseline", mode="before")
    @classmethod
    def _baseline_true(cls, value: Any) -> Any:
        return {} if value is True or value is None else value

    # Fields validate in order, so training is known here; a named space is checked by
    # schedule_problems once it is loaded.
    @field_validator("search_space")
    @classmethod
    def _space_warmup(cls, space: str | SearchSpace, info: ValidationInfo) -> str | SearchSpace:
        training = info.data.get("training")
        if isinstance(space, SearchSpace) and training is not None:
            why = _warmup_problem(_highest_warmup(space), training.epochs)
            if why is not None:
                raise ValueError(why)
        return space

    @field_validator("pruner")
    @classmethod
    def _asha_rungs(cls, pruner: Any, info: ValidationInfo) -> Any:
        training = info.data.get("training")
        if (
            isinstance(pruner, AshaSpec)
            and training is not None
            and pruner.min_resource >= training.epochs
        ):
            raise ValueError(
                f"asha's first rung (min_resource {pruner.min_resource} epochs) must come "
                f"before the last epoch: training.epochs is {training.epochs}"
            )
        return pruner

    @field_validator("baseline")
    @classmethod
    def _baseline_warmup(cls, baseline: Any, info: ValidationInfo) -> Any:
        training = info.data.get("training")
        if isinstance(baseline, Baseline) and training is not None:
            why = _warmup_problem(baseline.warmup_epochs, training.epochs)
            if why is not None:
                raise ValueError(why)
        return baseline


def _highest_warmup(space: SearchSpace) -> int | None:
    param = space.root.get("warmup_epochs")
    if param is None:
        return None
    if isinstance(param, CategoricalParam):
        return max(int(c) for c in param.choices)
    return int(param.high)


def _warmup_problem(warmup_epochs: int | None, epochs: int) -> str | None:
    if warmup_epochs is not None and warmup_epochs >= epochs:
        return (
            f"warmup_epochs may reach {warmup_epochs}, but training.epochs is {epochs}: "
            "warmup must end before training does"
        )
    return None


def fit_warmup(space: SearchSpace, epochs: int) -> SearchSpace:
    """A named (shared) space with the warmup lengths that end before ``epochs`` only: the
    default space's 0..3 suits 10 epochs, and a 3-epoch study gets 0..2 rather than a 422 (a
    space written inline in the spec is refused instead). Unchanged when nothing fits."""
    param = space.root.get("warmup_epochs")
    highest = _highest_warmup(space)
    if param is None or highest is None or highest < epochs:
        return space
    if isinstance(param, CategoricalParam):
        kept = [c for c in param.choices if int(c) < epochs]
        if not kept:
            return space
        fitted: Any = param.model_copy(update={"choices": kept})
    else:
        step = getattr(param, "step", 1) or 1
        high = param.low + (epochs - 1 - int(param.low)) // step * step
        if high < param.low:
            return space
        if high == param.low:  # one length left (a 1-epoch study): a range needs two
            fitted = CategoricalParam(type="categorical", choices=[high])
        else:
            fitted = type(param).model_validate({**param.model_dump(), "high": high})
    return SearchSpace({**space.root, "warmup_epochs": fitted})


def schedule_problems(spec: StudySpec, space: SearchSpace) -> list[tuple[str, str]]:
    """What in the (loaded) search space cannot run for ``training.epochs``, as (field, reason)."""
    why = _warmup_problem(_highest_warmup(space), spec.training.epochs)
    return [] if why is None else [("search_space.warmup_epochs", why)]


def recipe(spec: StudySpec) -> dict[str, Any]:
    """The values of every hyperparameter before sampling: the baseline's, or the common recipe."""
    base = spec.baseline if spec.baseline is not False else Baseline()
    values = base.model_dump()
    if values["batch_size"] is None:
        values["batch_size"] = spec.data.batch_size
    return values


def check_paths(spec: StudySpec, allowed_roots: list[Path]) -> list[tuple[str, str]]:
    """Paths that lie outside the allowed folders, as (field, reason); none when unconfined."""
    if not allowed_roots:
        return []
    problems = []
    roots = [r.resolve() for r in allowed_roots]
    paths = (("data.root", spec.data.root), ("model.weights_path", spec.model.weights_path))
    for field, value in paths:
        if value is None:
            continue
        path = Path(value).resolve()
        if not any(path.is_relative_to(root) for root in roots):
            allowed = ", ".join(map(str, roots))
            problems.append((field, f"must lie under one of the allowed folders ({allowed})"))
    return problems

"""Samplers and pruners: one spec model per name (options checked at study creation) and a
name-to-factory table that turns a checked spec into an Optuna object."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.errors import InvalidInput
from service.grid import ServerGridSampler

Seed = Annotated[int | None, Field(None, ge=0, le=2**32 - 1)]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TPESpec(_Options):
    name: Literal["tpe"]
    n_startup_trials: int = Field(10, ge=0, le=100_000)
    n_ei_candidates: int = Field(24, ge=1, le=10_000)
    multivariate: bool = True
    # With many workers, constant liar keeps TPE from proposing the same point to all of them.
    constant_liar: bool = True
    seed: Seed = None


class RandomSpec(_Options):
    name: Literal["random"]
    seed: Seed = None


class CmaEsSpec(_Options):
    name: Literal["cmaes"]
    n_startup_trials: int = Field(1, ge=0, le=100_000)
    sigma0: float | None = Field(None, gt=0)
    with_margin: bool = False
    seed: Seed = None


class QMCSpec(_Options):
    name: Literal["qmc"]
    qmc_type: Literal["sobol", "halton"] = "sobol"
    scramble: bool = True
    seed: Seed = None


class GPSpec(_Options):
    name: Literal["gp"]
    n_startup_trials: int = Field(10, ge=0, le=100_000)
    deterministic_objective: bool = False
    seed: Seed = None


class GridSpec(_Options):
    name: Literal["grid"]
    seed: Seed = None


SamplerSpec = Annotated[
    TPESpec | RandomSpec | CmaEsSpec | QMCSpec | GPSpec | GridSpec, Field(discriminator="name")
]


class MedianSpec(_Options):
    name: Literal["median"]
    n_startup_trials: int = Field(5, ge=0, le=100_000)
    n_warmup_steps: int = Field(0, ge=0, le=100_000)
    interval_steps: int = Field(1, ge=1, le=100_000)
    n_min_trials: int = Field(1, ge=1, le=100_000)


class PercentileSpec(MedianSpec):
    name: Literal["percentile"]  # type: ignore[assignment]
    percentile: float = Field(ge=0, le=100)


class SuccessiveHalvingSpec(_Options):
    name: Literal["successive_halving"]
    min_resource: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"
    reduction_factor: int = Field(4, ge=2, le=100)
    min_early_stopping_rate: int = Field(0, ge=0, le=100)
    bootstrap_count: int = Field(0, ge=0, le=100_000)


class HyperbandSpec(_Options):
    name: Literal["hyperband"]
    min_resource: int = Field(1, ge=1)
    max_resource: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"
    reduction_factor: int = Field(3, ge=2, le=100)
    bootstrap_count: int = Field(0, ge=0, le=100_000)

    @model_validator(mode="after")
    def _min_below_max(self) -> HyperbandSpec:
        if isinstance(self.max_resource, int) and self.max_resource <= self.min_resource:
            raise ValueError("max_resource must be greater than min_resource")
        return self


class ThresholdSpec(_Options):
    name: Literal["threshold"]
    lower: float | None = Field(None, allow_inf_nan=False)
    upper: float | None = Field(None, allow_inf_nan=False)
    n_warmup_steps: int = Field(0, ge=0, le=100_000)
    interval_steps: int = Field(1, ge=1, le=100_000)

    @model_validator(mode="after")
    def _one_bound(self) -> ThresholdSpec:
        if self.lower is None and self.upper is None:
            raise ValueError("give lower, upper or both")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError("lower must not exceed upper")
        return self


class NoPrunerSpec(_Options):
    name: Literal["none"]


class AshaSpec(_Options):
    """Asynchronous successive halving (service/asha.py): rungs at min_resource *
    reduction_factor**k epochs. `promotion` pauses trials below a rung's top 1/reduction_factor
    and resumes them from their checkpoints when they rank there; `stopping` prunes them."""

    name: Literal["asha"]
    reduction_factor: int = Field(3, ge=2, le=100)
    min_resource: int = Field(1, ge=1, le=100_000)
    mode: Literal["promotion", "stopping"] = "promotion"


def pauses(pruner: BaseModel) -> bool:
    """Whether the pruner pauses trials (asha, promotion mode) instead of only stopping them."""
    return isinstance(pruner, AshaSpec) and pruner.mode == "promotion"


PrunerSpec = Annotated[
    MedianSpec
    | PercentileSpec
    | SuccessiveHalvingSpec
    | HyperbandSpec
    | ThresholdSpec
    | NoPrunerSpec
    | AshaSpec,
    Field(discriminator="name"),
]


def _options(spec: BaseModel) -> dict[str, Any]:
    return spec.model_dump(exclude={"name"})


def _gp_sampler(spec: GPSpec, _space: dict[str, list[Any]] | None) -> optuna.samplers.BaseSampler:
    # GPSampler needs torch; the slim server image has none, so say so instead of failing later.
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise InvalidInput(
            "the gp sampler needs PyTorch installed on the server", field="sampler.name"
        ) from exc
    return optuna.samplers.GPSampler(**_options(spec))


def _grid_sampler(
    spec: GridSpec, space: dict[str, list[Any]] | None
) -> optuna.samplers.BaseSampler:
    assert space is not None, "grid spaces are checked before the sampler is built"
    return ServerGridSampler(space, seed=spec.seed)


SAMPLERS: dict[str, Callable[[Any, dict[str, list[Any]] | None], optuna.samplers.BaseSampler]] = {
    "tpe": lambda s, _: optuna.samplers.TPESampler(**_options(s)),
    "random": lambda s, _: optuna.samplers.RandomSampler(**_options(s)),
    "cmaes": lambda s, _: optuna.samplers.CmaEsSampler(**_options(s)),
    "qmc": lambda s, _: optuna.samplers.QMCSampler(**_options(s)),
    "gp": _gp_sampler,
    "grid": _grid_sampler,
}

PRUNERS: dict[str, Callable[[Any], optuna.pruners.BasePruner]] = {
    "median": lambda s: optuna.pruners.MedianPruner(**_options(s)),
    "percentile": lambda s: optuna.pruners.PercentilePruner(**_options(s)),
    "successive_halving": lambda s: optuna.pruners.SuccessiveHalvingPruner(**_options(s)),
    "hyperband": lambda s: optuna.pruners.HyperbandPruner(**_options(s)),
    "threshold": lambda s: optuna.pruners.ThresholdPruner(**_options(s)),
    "none": lambda s: optuna.pruners.NopPruner(),
    # ASHA's decisions read the rungs straight from the database (service/rungs.py): Optuna's
    # pruner interface has no "pause".
    "asha": lambda s: optuna.pruners.NopPruner(),
}


def build_sampler(
    spec: BaseModel, grid: dict[str, list[Any]] | None
) -> optuna.samplers.BaseSampler:
    return SAMPLERS[spec.name](spec, grid)  # type: ignore[attr-defined]


def build_pruner(spec: BaseModel) -> optuna.pruners.BasePruner:
    return PRUNERS[spec.name](spec)  # type: ignore[attr-defined]

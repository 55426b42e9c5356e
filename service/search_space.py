"""Search spaces as data: the parameter schema, the fine-tuning hyperparameters a worker knows,
loading named spaces from search_spaces/, and conversion to Optuna distributions."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import optuna
import yaml
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

Number = Annotated[float, Field(allow_inf_nan=False)]


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatParam(_Param):
    type: Literal["float"]
    low: Number
    high: Number
    log: bool = False
    step: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.step)
        return self


class IntParam(_Param):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        _check_range(self.low, self.high, self.log, self.step if self.step != 1 else None)
        return self


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[bool | int | Number | str] = Field(min_length=1, max_length=10_000)

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError("choices must be distinct")
        return self


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if not low < high:
        raise ValueError(f"low ({low}) must be less than high ({high})")
    if log and low <= 0:
        raise ValueError("log scale needs low > 0")
    if log and step is not None:
        raise ValueError("log and step cannot be combined")


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


@dataclass(frozen=True)
class Hyperparameter:
    """A hyperparameter the worker knows how to apply, and the values that make sense for it."""

    kind: type
    low: float | None = None  # inclusive unless low_open
    high: float | None = None  # inclusive unless high_open
    low_open: bool = False
    high_open: bool = False

    def check(self, value: Any) -> str | None:
        """Return why `value` is not acceptable, or None."""
        if self.kind is bool:
            return None if isinstance(value, bool) else "must be true or false"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be {'an integer' if self.kind is int else 'a number'}"
        if self.kind is int and not float(value).is_integer():
            return "must be an integer"
        if not math.isfinite(value):
            return "must be finite"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return f"must be {'<' if self.high_open else '<='} {self.high}"
        return None


HYPERPARAMETERS: dict[str, Hyperparameter] = {
    "lr": Hyperparameter(float, low=0, low_open=True, high=10),
    "momentum": Hyperparameter(float, low=0, high=1, high_open=True),
    "step_size": Hyperparameter(int, low=1, high=100_000),
    "gamma": Hyperparameter(float, low=0, low_open=True, high=1),
    "warmup_epochs": Hyperparameter(int, low=0, high=10_000),
    "weight_decay": Hyperparameter(float, low=0, high=1),
    "nesterov": Hyperparameter(bool),
    "batch_size": Hyperparameter(int, low=1, high=8192),
    # the new head's learning rate is lr * head_lr_mult (discriminative learning rates)
    "head_lr_mult": Hyperparameter(float, low=0, low_open=True, high=1000),
    "label_smoothing": Hyperparameter(float, low=0, high=1, high_open=True),
}

# The usual fine-tuning recipe: what the baseline trial runs and what absent parameters take.
COMMON_RECIPE: dict[str, Any] = {
    "lr": 0.01,
    "momentum": 0.9,
    "step_size": 10,
    "gamma": 0.1,
    "warmup_epochs": 0,
    "weight_decay": 0.0,
    "nesterov": False,
    "head_lr_mult": 1.0,
    "label_smoothing": 0.0,
}


class SearchSpace(RootModel[dict[str, Param]]):
    """A mapping from hyperparameter name to its range; names must be known hyperparameters."""

    @model_validator(mode="after")
    def _known_names(self) -> SearchSpace:
        if not self.root:
            raise ValueError("the search space is empty")
        problems = []
        for name, param in self.root.items():
            rule = HYPERPARAMETERS.get(name)
            if rule is None:
                why = f"unknown hyperparameter {name!r}; known: {', '.join(HYPERPARAMETERS)}"
            else:
                why = _param_problem(rule, param)
            if why is not None:  # reported at the parameter's own path: search_space.<name>
                problems.append(
                    InitErrorDetails(
                        type=PydanticCustomError("search_space", "{reason}", {"reason": why}),
                        loc=(name,),
                        input=param.model_dump(),
                    )
                )
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self


AnyParam = FloatParam | IntParam | CategoricalParam


def _param_problem(rule: Hyperparameter, param: AnyParam) -> str | None:
    if isinstance(param, CategoricalParam):
        for choice in param.choices:
            if (why := rule.check(choice)) is not None:
                return f"choice {choice!r} {why}"
        return None
    if rule.kind is bool:
        return "is true/false: use type categorical with choices [false, true]"
    if rule.kind is int and isinstance(param, FloatParam):
        return "is an integer: use type int"
    for bound in (param.low, param.high):
        if (why := rule.check(bound)) is not None:
            return f"bound {bound} {why}"
    return None


def param_contains(param: FloatParam | IntParam | CategoricalParam, value: Any) -> bool:
    """Whether `value` is one the parameter's Optuna distribution can hold: inside the range
    and on its step, or one of the choices (of the same type: true is not 1)."""
    if isinstance(param, CategoricalParam):
        return any(
            value == c and isinstance(value, bool) == isinstance(c, bool) for c in param.choices
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if not math.isfinite(value) or (param.log and value <= 0):
        return False
    if isinstance(param, IntParam) and not float(value).is_integer():
        return False
    distribution = to_distribution(param)
    return distribution._contains(distribution.to_internal_repr(value))


def describe(param: FloatParam | IntParam | CategoricalParam) -> str:
    """The parameter's values in words, for error messages."""
    if isinstance(param, CategoricalParam):
        return f"one of {param.choices}"
    text = f"{param.type} in [{param.low}, {param.high}]"
    if param.log:
        text += ", log scale"
    if param.step not in (None, 1) or (isinstance(param, FloatParam) and param.step == 1):
        text += f", step {param.step}"
    return text


SPACE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def load_named_space(name: str, folder: Path) -> SearchSpace:
    """Load search_spaces/<name>.yaml. Raises ValueError with the reason when it cannot."""
    if not SPACE_NAME.fullmatch(name):
        raise ValueError("a search space name may hold only letters, digits, '.', '_' and '-'")
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ValueError(f"no search space named {name!r}; known: {', '.join(known) or 'none'}")
    document = yaml.safe_load(path.read_text())
    if isinstance(document, dict):
        document = document.get("params", document)
    return SearchSpace.model_validate(document)


def to_distribution(p: AnyParam) -> optuna.distributions.BaseDistribution:
    if isinstance(p, FloatParam):
        return optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    if isinstance(p, IntParam):
        return optuna.distributions.IntDistribution(p.low, p.high, log=p.log, step=p.step)
    return optuna.distributions.CategoricalDistribution(p.choices)


def to_distributions(space: SearchSpace) -> dict[str, optuna.distributions.BaseDistribution]:
    return {name: to_distribution(p) for name, p in space.root.items()}


MAX_GRID_POINTS = 100_000


def grid_values(space: SearchSpace) -> dict[str, list[Any]]:
    """The grid sampler's values per parameter. Raises ValueError when a range is continuous."""
    grid: dict[str, list[Any]] = {}
    for name, p in space.root.items():
        if isinstance(p, CategoricalParam):
            grid[name] = list(p.choices)
        elif p.step is None or p.log:
            raise ValueError(f"{name}: the grid sampler needs a step or categorical choices")
        else:
            count = int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1
            if count > MAX_GRID_POINTS:
                raise ValueError(f"{name}: {count} grid points is too many")
            values = [p.low + i * p.step for i in range(count)]
            grid[name] = [int(v) for v in values] if isinstance(p, IntParam) else values
    if math.prod(len(v) for v in grid.values()) > MAX_GRID_POINTS:
        raise ValueError(f"the grid has more than {MAX_GRID_POINTS} points")
    return grid

"""The trial a worker runs: one typed description, built once from the server's claim answer.

The server resolves every default (the spec's sections come with each field filled in, and
``config`` holds every hyperparameter, ``batch_size`` included), so the worker keeps no
defaults of its own: a value missing from the answer, or of the wrong type, is a
:class:`BadClaim` that names it, never a guess. Fields the worker does not read (``params``, the
spec's other sections) are ignored, so the server can add some; an unknown hyperparameter is
refused, since training without it would not be the trial the study asked for.

Flow: ``POST /trials/claim`` -> :meth:`Trial.from_claim` -> ``Trial.job`` (a :class:`TrialJob`)
-> :func:`worker.engine.fine_tune`.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from worker.data import DataSpec
from worker.models import ModelSpec

T = TypeVar("T")

# The server's answer to a report: go on, stop for good, or stop until promoted (pruner asha).
Verdict = Literal["continue", "prune", "pause"]


class BadClaim(ValueError):
    """The claim answer lacks a value this worker needs, or has one it cannot use.

    ``trial_id`` is the trial's id when the answer had a readable one (so it can be handed back).
    """

    def __init__(self, problem: str, trial_id: int | None = None) -> None:
        super().__init__(f"the server's claim answer is not one this worker can run: {problem}")
        self.problem = problem
        self.trial_id = trial_id


@dataclass(frozen=True)
class Hyperparameters:
    """Every hyperparameter of the trial: the study's recipe overridden by the sampled params."""

    lr: float
    momentum: float
    step_size: int  # epochs between learning-rate decays, counted after warmup
    gamma: float
    warmup_epochs: int
    weight_decay: float
    nesterov: bool
    batch_size: int
    head_lr_mult: float  # the new head's learning rate is lr * head_lr_mult
    label_smoothing: float  # of the training loss (validation loss is plain cross-entropy)


@dataclass(frozen=True)
class Training:
    """What the worker reads of the spec's ``training`` section (the seed comes with the claim)."""

    epochs: int
    checkpoint_every: int  # epochs between checkpoints; 0: none
    compile: bool  # torch.compile on CUDA
    norm_weight_decay: float | None  # of norm layers and biases; None: weight_decay


@dataclass(frozen=True)
class Objective:
    """The spec's ``objective``: the metric a trial is judged by, and at which epoch."""

    metric: str  # "val_loss" (lower is better) or "val_accuracy" (higher is better)
    epoch: str  # "last", or "best": the best epoch's values and weights are the trial's

    def better(self, val_loss: float, val_accuracy: float, than: tuple[float, float]) -> bool:
        """Whether (val_loss, val_accuracy) beats ``than`` on the metric (ties do not)."""
        if self.metric == "val_accuracy":
            return val_accuracy > than[1]
        return val_loss < than[0]


@dataclass(frozen=True)
class TrialJob:
    """What the engine trains: the model, the data, how long, with which hyperparameters."""

    model: ModelSpec
    data: DataSpec  # the trial's batch size is hparams.batch_size
    training: Training
    hparams: Hyperparameters
    seed: int
    objective: Objective

    @classmethod
    def from_parts(cls, spec: Any, config: Any, seed: Any) -> TrialJob:
        """Read the claim's ``spec`` and ``config`` (plain JSON). Raises :class:`BadClaim`."""
        sections = _mapping(spec, "spec")
        hparams = _read(Hyperparameters, config, "config", strict=True)
        data = _read(DataSpec, sections.get("data"), "spec.data")
        try:
            data_spec = DataSpec.from_dict(data)
        except ValueError as exc:
            raise BadClaim(f"spec.data: {exc}") from None
        return cls(
            model=ModelSpec.from_dict(_read(ModelSpec, sections.get("model"), "spec.model")),
            data=data_spec,
            training=Training(**_read(Training, sections.get("training"), "spec.training")),
            hparams=Hyperparameters(**hparams),
            seed=_typed(seed, int, "seed"),
            objective=_objective(sections.get("objective")),
        )


def _objective(section: Any) -> Objective:
    objective = Objective(**_read(Objective, section, "spec.objective"))
    if objective.metric not in ("val_loss", "val_accuracy"):
        raise BadClaim(f"spec.objective.metric: this worker does not know {objective.metric!r}")
    if objective.epoch not in ("last", "best"):
        raise BadClaim(f"spec.objective.epoch: this worker does not know {objective.epoch!r}")
    return objective


@dataclass(frozen=True)
class Resume:
    """A retried trial continues after ``epoch``, from the checkpoint at ``checkpoint_url``."""

    epoch: int
    checkpoint_url: str


@dataclass(frozen=True)
class Trial:
    """One claimed trial: who it is on the server, its lease, and the job to train."""

    trial_id: int
    study: str
    number: int
    is_baseline: bool
    heartbeat_interval: float
    resume: Resume | None
    job: TrialJob
    preflight: bool = False  # check the study first (worker/preflight.py), then train

    @property
    def label(self) -> str:
        return f"trial {self.number} of {self.study}"

    @classmethod
    def from_claim(cls, answer: Any) -> Trial:
        """The trial of a claim answer (``POST /api/v1/trials/claim``'s JSON body).

        Raises :class:`BadClaim`, with ``trial_id`` set when the answer had a readable one."""
        claim = _mapping(answer, "the answer")
        trial_id = _field(claim, "trial_id", int, "")
        try:
            resume = claim.get("resume", _MISSING)
            return cls(
                trial_id=trial_id,
                study=_field(claim, "study", str, ""),
                number=_field(claim, "number", int, ""),
                is_baseline=_field(claim, "is_baseline", bool, ""),
                heartbeat_interval=_field(claim, "heartbeat_interval", float, ""),
                resume=None if resume is None else Resume(**_read(Resume, resume, "resume")),
                job=TrialJob.from_parts(
                    claim.get("spec"), claim.get("config"), _field(claim, "seed", int, "")
                ),
                # a server without preflights does not send it
                preflight=_typed(claim.get("preflight", False), bool, "preflight"),
            )
        except BadClaim as exc:
            raise BadClaim(exc.problem, trial_id) from None


# --- reading JSON into the dataclasses above -------------------------------------------------
_MISSING: Any = object()
_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _read(cls: type[Any], section: Any, where: str, *, strict: bool = False) -> dict[str, Any]:
    """The fields of dataclass ``cls`` from ``section``, each present and of its declared type.
    ``strict``: a key that is not a field is refused too."""
    values = _mapping(section, where)
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    read = {name: _field(values, name, hints[name], f"{where}.") for name in names}
    unknown = sorted(set(values) - set(names)) if strict else []
    if unknown:
        raise BadClaim(
            f"{where}.{unknown[0]}: this worker does not know it (known: "
            f"{', '.join(names)}); update the worker"
        )
    return read


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is _MISSING or value is None:
        raise BadClaim(f"{where} is missing")
    if not isinstance(value, Mapping):
        raise BadClaim(f"{where} must be an object, not {value!r}")
    return value


def _field(values: Mapping[str, Any], name: str, hint: Any, prefix: str) -> Any:
    if name not in values:
        raise BadClaim(f"{prefix}{name} is missing")
    return _typed(values[name], hint, f"{prefix}{name}")


def _typed(value: Any, hint: Any, where: str) -> Any:
    """``value`` as JSON gives it, checked against ``hint``: int, float (an int is taken), bool,
    str, ``X | None`` and ``tuple[X, ...]`` (a JSON list)."""
    if isinstance(hint, types.UnionType) or get_origin(hint) is Union:
        options = [o for o in get_args(hint) if o is not type(None)]
        if value is None:
            return None
        (hint,) = options
    if get_origin(hint) is tuple:
        if not isinstance(value, list | tuple):
            raise BadClaim(f"{where} must be a list, not {value!r}")
        item = get_args(hint)[0]
        return tuple(_typed(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, hint) and not (hint is not bool and isinstance(value, bool)):
        return value
    raise BadClaim(f"{where} must be {_NAMES[hint]}, not {value!r}")

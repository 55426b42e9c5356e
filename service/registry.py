"""Open studies: one cached optuna.Study per study and process, built from the spec stored in
the study's user attrs, so every server process on the same storage sees the same studies."""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from typing import Any

import optuna
import yaml
from optuna.distributions import BaseDistribution
from pydantic import ValidationError

from service import keys, warm_start
from service import optuna_internals as internals
from service.architectures import check_model, with_preprocessing
from service.errors import InvalidInput, NotFound
from service.grid import mark_grid_points
from service.optimizers import build_pruner, build_sampler
from service.preflight_state import PENDING
from service.pruning import CompletedTrials
from service.sample_ahead import SamplePool
from service.search_space import (
    SearchSpace,
    describe,
    grid_values,
    load_named_space,
    param_contains,
    to_distributions,
)
from service.settings import Settings
from service.spec import StudySpec, check_paths, fit_warmup, recipe, schedule_problems
from service.storage import Backend, TrialFacts, utcnow
from service.trial_cache import StudyTrials
from service.validation import format_errors

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyHandle:
    study: optuna.Study
    spec: StudySpec
    space: SearchSpace
    distributions: dict[str, BaseDistribution]
    recipe: dict[str, Any]
    completed: CompletedTrials = dataclasses.field(default_factory=CompletedTrials, compare=False)
    trials: StudyTrials = dataclasses.field(default_factory=StudyTrials, compare=False)
    ahead: SamplePool = dataclasses.field(default_factory=SamplePool, compare=False)
    version: int = 0  # of the stored spec: PATCH bumps it, every process then reads the spec again

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def study_id(self) -> int:
        return internals.study_id(self.study)

    def config(self, params: dict[str, Any]) -> dict[str, Any]:
        """Every hyperparameter of a trial, resolved: the recipe (batch_size included) overridden
        by its sampled params. The claim answer carries it; the worker adds no defaults."""
        return {**self.recipe, **params}


class StudyRegistry:
    def __init__(self, backend: Backend, settings: Settings) -> None:
        self._backend = backend
        self._settings = settings
        self._handles: dict[str, StudyHandle] = {}
        self._lock = threading.Lock()

    # --- creation ------------------------------------------------------------------------------
    def resolve_space(self, spec: StudySpec) -> SearchSpace:
        if isinstance(spec.search_space, SearchSpace):
            return spec.search_space
        try:
            named = load_named_space(spec.search_space, self._settings.search_spaces_dir)
            return fit_warmup(named, spec.training.epochs)
        except ValidationError as exc:
            errors = format_errors(exc.errors(), None)
            problems = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
            raise InvalidInput(
                f"search space {spec.search_space!r} is invalid: {problems}", field="search_space"
            ) from exc
        except (ValueError, OSError, yaml.YAMLError) as exc:
            raise InvalidInput(str(exc), field="search_space") from exc

    def check(self, spec: StudySpec) -> tuple[SearchSpace, Any, Any]:
        """The checks that need more than the spec itself; returns the resolved space and the
        sampler and pruner they built. Raises InvalidInput."""
        space = self.resolve_space(spec)
        for field, reason in schedule_problems(spec, space):  # a named space nothing fits
            raise InvalidInput(reason, field=field)
        if spec.baseline is not False:
            given = spec.baseline.model_fields_set
            values = recipe(spec)  # what the baseline trial runs
            for name, param in space.root.items():
                value = values[name]
                if param_contains(param, value):
                    continue
                if name == "batch_size" and spec.baseline.batch_size is None:
                    source = "taken from data.batch_size"
                elif name not in given:
                    source = "the common recipe's; set baseline." + name + " or baseline: false"
                else:
                    source = "given"
                raise InvalidInput(
                    f"baseline value {value!r} ({source}) is not a value of the search "
                    f"space's {name}: {describe(param)}",
                    field=f"baseline.{name}",
                )
        for field, reason in check_paths(spec, self._settings.allowed_roots):
            raise InvalidInput(reason, field=field)
        for field, reason in check_model(spec):
            raise InvalidInput(reason, field=field)
        # Some option checks only the factories can make.
        return (space, *self._build(spec, space))

    def _build(self, spec: StudySpec, space: SearchSpace) -> tuple[Any, Any]:
        grid = None
        if spec.sampler.name == "grid":
            try:
                grid = grid_values(space)
            except ValueError as exc:
                raise InvalidInput(str(exc), field="search_space") from exc
        try:
            return build_sampler(spec.sampler, grid), build_pruner(spec.pruner)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(str(exc), field="sampler") from exc

    def warm_start_source(self, spec: StudySpec) -> StudyHandle | None:
        """The study `warm_start.study` names. Raises InvalidInput when there is none."""
        if spec.warm_start is None:
            return None
        try:
            source = self.get(spec.warm_start.study)
        except NotFound:
            raise InvalidInput(
                f"no study named {spec.warm_start.study!r} to warm-start from",
                field="warm_start.study",
            ) from None
        metric = source.spec.objective.metric
        if spec.warm_start.history and metric != spec.objective.metric:
            raise InvalidInput(
                f"study {source.name!r} measured {metric}, this one {spec.objective.metric}: "
                "its trials are no evidence for this objective (set history: false)",
                field="warm_start.history",
            )
        return source

    def create(self, spec: StudySpec) -> StudyHandle:
        spec = with_preprocessing(spec)  # stored decided: every process hands out the same
        space, sampler, pruner = self.check(spec)
        source = self.warm_start_source(spec)
        study = self._backend.create_study(
            spec.name,
            sampler,
            pruner,
            {
                keys.SPEC: spec.model_dump(mode="json"),
                keys.SPACE: space.model_dump(mode="json"),
                keys.CREATED_AT: utcnow().isoformat(),
            },
            direction=spec.objective.direction,
        )
        handle = self._handle(study, spec, space)
        # The first trial handed to a worker that runs preflights checks the study first.
        self._backend.set_study_system_attrs(handle.study_id, {keys.PREFLIGHT: PENDING})
        # Waiting trials are made under the claim lock (claims count them there), and a claim
        # must find the baseline and the warm start's configurations waiting in this order.
        with self._backend.claim_lock.hold(handle.study_id):
            baseline = []
            if spec.baseline is not False:
                # Enqueued first, so the baseline is the first trial the study hands out.
                params = {name: handle.recipe[name] for name in space.root}
                study.enqueue_trial(params, user_attrs={keys.BASELINE: True})
                baseline.append(params)
            if source is not None:
                self._warm_start(handle, source, baseline)
            mark_grid_points(study)
        with self._lock:
            self._handles[spec.name] = handle
        return handle

    def _warm_start(
        self, handle: StudyHandle, source: StudyHandle, baseline: list[dict[str, Any]]
    ) -> None:
        assert handle.spec.warm_start is not None
        seed = warm_start.plan(source, handle, handle.spec.warm_start, baseline)
        for params, origin in seed.enqueue:
            handle.study.enqueue_trial(params, user_attrs={keys.WARM_START: origin})
        handle.study.add_trials(seed.priors)
        logger.info(
            "study %s warm-starts from %s: %d configurations first, %d prior trials",
            handle.name,
            source.name,
            len(seed.enqueue),
            len(seed.priors),
        )

    def _handle(self, study: optuna.Study, spec: StudySpec, space: SearchSpace) -> StudyHandle:
        return StudyHandle(study, spec, space, to_distributions(space), recipe(spec))

    # --- lookup --------------------------------------------------------------------------------
    def get(self, name: str) -> StudyHandle:
        """The open study named `name`. Raises NotFound.

        The name is looked up in the database every time (one small query): another server
        process may have deleted the study, or deleted it and created a new one of that name,
        since this process opened it."""
        try:
            study_id, version = self._backend.study_ref(name)
        except NotFound:
            self.forget(name)
            raise
        return self.open(study_id, name, version)

    def open(self, study_id: int, name: str, version: int) -> StudyHandle:
        """The handle of the study with this id, name and spec version (as a query just read
        them): the cached one, the cached one with its spec read again (it changed), or a new
        one. Raises NotFound."""
        with self._lock:
            handle = self._handles.get(name)
        if handle is not None and handle.study_id == study_id:
            if handle.version == version:
                return handle
            return self._respec(handle, version)
        attrs = self._backend.study_user_attrs(study_id)
        if keys.SPEC not in attrs:
            raise NotFound(f"study {name!r} was not created by hpsearch")
        # Specs stored before preprocessing presets existed get today's values (224, x256/224).
        spec = with_preprocessing(StudySpec.model_validate(attrs[keys.SPEC]))
        space = SearchSpace.model_validate(attrs[keys.SPACE])
        sampler, pruner = self._build(spec, space)
        study = self._backend.load_study(name, sampler, pruner)
        handle = dataclasses.replace(self._handle(study, spec, space), version=version)
        with self._lock:
            current = self._handles.get(name)
            if current is not None and current.study_id == handle.study_id:
                return current  # another thread opened it meanwhile: keep one Study per study
            self._handles[name] = handle
            return handle

    def _respec(self, handle: StudyHandle, version: int) -> StudyHandle:
        """The handle with the spec as stored now. Only n_trials and scheduling can change
        (PATCH), so the Study, its sampler and what it has read stay."""
        spec = with_preprocessing(
            StudySpec.model_validate(self._backend.study_user_attrs(handle.study_id)[keys.SPEC])
        )
        fresh = dataclasses.replace(handle, spec=spec, version=version)
        with self._lock:
            current = self._handles.get(handle.name)
            if (
                current is not None
                and current.study_id == fresh.study_id
                and current.version >= version
            ):
                return current
            self._handles[handle.name] = fresh
        return fresh

    def forget(self, name: str) -> None:
        with self._lock:
            self._handles.pop(name, None)

    def names(self) -> list[str]:
        return self._backend.study_names()

    def for_trial(self, trial_id: int) -> tuple[StudyHandle, optuna.trial.FrozenTrial]:
        """The study of a trial and the trial as stored now. Raises NotFound.

        Not cached: trial and study ids can be reused after a study is deleted (SQLite reuses
        the highest row ids), so a cached id could name another study's trial."""
        study = self._backend.study_of_trial(trial_id)
        if study is None:
            raise NotFound(f"no trial with id {trial_id}")
        return self._open(*study), self._backend.trial(trial_id)

    def facts(self, trial_id: int) -> tuple[StudyHandle, TrialFacts]:
        """for_trial for the frequent messages: the trial's facts instead of all of it."""
        facts = self._backend.trial_facts(trial_id)
        return self._open(facts.study_id, facts.study_name), facts

    def _open(self, study_id: int, name: str) -> StudyHandle:
        """The handle of the study with this id and name, read together from one row."""
        with self._lock:
            handle = self._handles.get(name)
        if handle is None or handle.study_id != study_id:
            handle = self.get(name)
            if handle.study_id != study_id:  # deleted and created again meanwhile
                raise NotFound(f"no study named {name!r} with id {study_id}")
        return handle

    def is_stopped(self, handle: StudyHandle) -> bool:
        return self._backend.is_stopped(handle.study_id)

"""The few private parts of Optuna the server relies on, in one place.

Each is used because the public API has no equivalent for a server that drives studies from
requests instead of `study.optimize`; `tests/service/test_optuna_internals.py` pins every one,
so an Optuna upgrade that moves them fails there first, by name.
"""

from __future__ import annotations

import copy

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial


def study_id(study: optuna.Study) -> int:
    return study._study_id


def study_storage(study: optuna.Study) -> BaseStorage:
    return study._storage


def trial_id(trial: optuna.trial.Trial | FrozenTrial) -> int:
    return trial._trial_id


def frozen_copy(trial: optuna.trial.Trial) -> FrozenTrial:
    """The trial as it was read when it was created, with the params suggested since: reading it
    again from the database would cost a full read of a running trial."""
    return copy.deepcopy(trial._cached_frozen_trial)


def forget_cached_trials(study: optuna.Study) -> None:
    """What `ask()` does before it creates a trial: the sampler then reads the study afresh."""
    study._thread_local.cached_all_trials = None


# GridSampler's grid, for a server-side subclass (service/grid.py).
def grid_points(sampler: optuna.samplers.GridSampler) -> list[tuple[object, ...]]:
    return sampler._all_grids


def grid_param_names(sampler: optuna.samplers.GridSampler) -> list[str]:
    return sampler._param_names


def grid_search_space(sampler: optuna.samplers.GridSampler) -> dict[str, list[object]]:
    return sampler._search_space


def grid_value_equal(a: object, b: object) -> bool:
    return optuna.samplers.GridSampler._grid_value_equal(a, b)


def sampler_rng(sampler: optuna.samplers.GridSampler):  # noqa: ANN201 - Optuna's _LazyRandomState
    return sampler._rng.rng

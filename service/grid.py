"""The grid sampler as a server runs it: every combination handed out once, and no `study.stop()`.

Optuna's GridSampler is written for `study.optimize`: its `after_trial` calls `study.stop()` when
the grid is used up (a RuntimeError anywhere else, so the `complete` that finished the grid
answered 500), and outside the first n trials it picks a combination among those not *finished*,
so concurrent claims could get the same one. Here the claim lock already serialises trial
creation, so `before_trial` picks among combinations not yet given to any trial, and the study's
budget ends the study when none is left (see `Budget.grid_left`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

GRID_ID_ATTR = "grid_id"  # Optuna's own system attr names: the dashboard and tools read them
GRID_SPACE_ATTR = "search_space"


class ServerGridSampler(optuna.samplers.GridSampler):
    @property
    def grid_size(self) -> int:
        return len(self._all_grids)

    def grid_id_of(self, params: dict[str, Any]) -> int | None:
        """The combination `params` is, or None when it is not on the grid."""
        point = tuple(params.get(name) for name in self._param_names)
        for grid_id, candidate in enumerate(self._all_grids):
            if all(self._grid_value_equal(a, b) for a, b in zip(candidate, point, strict=True)):
                return grid_id
        return None

    def left(self, assigned: Iterable[int]) -> list[int]:
        """The combinations no trial has been given, from the grid ids trials hold."""
        return sorted(set(range(self.grid_size)) - set(assigned))

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if GRID_ID_ATTR in trial.system_attrs or "fixed_params" in trial.system_attrs:
            return  # a retry or an enqueued trial (the baseline) keeps its own params
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        left = self.left(t.system_attrs[GRID_ID_ATTR] for t in trials
                         if GRID_ID_ATTR in t.system_attrs)
        if not left:  # claims check first; only a trial made outside a claim gets here
            left = list(range(self.grid_size))
        grid_id = int(self._rng.rng.choice(left))
        study._storage.set_trial_system_attr(trial._trial_id, GRID_SPACE_ATTR, self._search_space)
        study._storage.set_trial_system_attr(trial._trial_id, GRID_ID_ATTR, grid_id)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        """Nothing: Optuna's stops `optimize`, which a server never runs."""


def grid_left(sampler: optuna.samplers.BaseSampler, trials: Iterable[FrozenTrial]) -> int | None:
    """How many combinations no trial has been given; None for other samplers."""
    if not isinstance(sampler, ServerGridSampler):
        return None
    return len(sampler.left(t.system_attrs[GRID_ID_ATTR] for t in trials
                            if GRID_ID_ATTR in t.system_attrs))


def mark_grid_point(study: optuna.Study, params: dict[str, Any]) -> None:
    """When the (only) waiting trial, the baseline, is a combination of a grid study's grid, it
    counts as that combination, so the grid does not run it a second time."""
    sampler = study.sampler
    if not isinstance(sampler, ServerGridSampler):
        return
    grid_id = sampler.grid_id_of(params)
    if grid_id is None:
        return
    (waiting,) = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    study._storage.set_trial_system_attr(waiting._trial_id, GRID_SPACE_ATTR, sampler._search_space)
    study._storage.set_trial_system_attr(waiting._trial_id, GRID_ID_ATTR, grid_id)

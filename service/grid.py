"""The grid sampler as a server runs it: every combination handed out once, and no `study.stop()`.

Optuna's GridSampler is written for `study.optimize`: its `after_trial` calls `study.stop()` when
the grid is used up (a RuntimeError anywhere else, so the `complete` that finished the grid
answered 500), and outside the first n trials it picks a combination among those not *finished*,
so concurrent claims could get the same one. Here the claim lock already serialises trial
creation, so `before_trial` picks among combinations not yet given to any trial, and the study's
budget ends the study when none is left (`Budget.grid_left`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from service import keys
from service import optuna_internals as internals


class ServerGridSampler(optuna.samplers.GridSampler):
    @property
    def grid_size(self) -> int:
        return len(internals.grid_points(self))

    def grid_id_of(self, params: dict[str, Any]) -> int | None:
        """The combination `params` is, or None when it is not on the grid."""
        point = [params.get(name) for name in internals.grid_param_names(self)]
        for grid_id, candidate in enumerate(internals.grid_points(self)):
            if all(internals.grid_value_equal(a, b) for a, b in zip(candidate, point, strict=True)):
                return grid_id
        return None

    def left(self, assigned: Iterable[int]) -> list[int]:
        """The combinations no trial has been given, from the grid ids trials hold."""
        return sorted(set(range(self.grid_size)) - set(assigned))

    def mark(self, storage: Any, trial_id: int, grid_id: int) -> None:
        storage.set_trial_system_attr(trial_id, keys.GRID_SPACE, internals.grid_search_space(self))
        storage.set_trial_system_attr(trial_id, keys.GRID_ID, grid_id)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if keys.GRID_ID in trial.system_attrs or "fixed_params" in trial.system_attrs:
            return  # a retry or an enqueued trial (the baseline) keeps its own params
        storage = internals.study_storage(study)
        trials = storage.get_all_trials(internals.study_id(study), deepcopy=False)
        left = self.left(assigned_grid_ids(trials))
        if not left:  # claims check first; only a trial made outside a claim gets here
            left = list(range(self.grid_size))
        self.mark(storage, internals.trial_id(trial), int(internals.sampler_rng(self).choice(left)))

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """Nothing: Optuna's stops `optimize`, which a server never runs."""


def assigned_grid_ids(trials: Iterable[FrozenTrial]) -> list[int]:
    return [t.system_attrs[keys.GRID_ID] for t in trials if keys.GRID_ID in t.system_attrs]


def grid_left(sampler: optuna.samplers.BaseSampler, assigned: Iterable[int]) -> int | None:
    """How many combinations no trial has been given, from the grid ids trials hold (read
    lazily: only a grid study reads them); None for other samplers."""
    if not isinstance(sampler, ServerGridSampler):
        return None
    return len(sampler.left(assigned))


def mark_grid_points(study: optuna.Study) -> None:
    """A waiting trial (the baseline, a warm start's configuration) whose params are a
    combination of a grid study's grid counts as that combination, so the grid does not run it
    a second time."""
    sampler = study.sampler
    if not isinstance(sampler, ServerGridSampler):
        return
    storage = internals.study_storage(study)
    for waiting in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        grid_id = sampler.grid_id_of(waiting.system_attrs.get("fixed_params", {}))
        if grid_id is not None and keys.GRID_ID not in waiting.system_attrs:
            sampler.mark(storage, internals.trial_id(waiting), grid_id)

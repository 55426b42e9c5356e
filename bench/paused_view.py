"""A sampler that sees paused trials as PRUNED at their last report: a variant for the replay
(bench/replay.py), to measure what asha promotion gains when the sampler learns from them.

A paused trial is RUNNING in the study (it will resume), and Optuna's TPE counts only COMPLETE
and PRUNED trials among its startup trials and puts every RUNNING one in its "bad" group
(constant liar), whatever it reported. Under asha promotion most trials are paused most of the
time, so TPE stays random search for most of a study. This wrapper hands the inner sampler a
view of the study in which those trials are PRUNED copies (TPE ranks pruned trials by their
last step, then value), and leaves the study itself as it is.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Container, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState


class _StudyView:
    """The study, with the trials numbered in `paused` shown as PRUNED."""

    def __init__(self, study: optuna.Study, paused: Container[int]) -> None:
        self._study = study
        self._paused = paused

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        trials = []
        for trial in self._study._get_trials(deepcopy=False, states=None, use_cache=use_cache):
            if trial.number in self._paused and trial.state == TrialState.RUNNING:
                trial = copy.copy(trial)
                trial.state = TrialState.PRUNED
            if states is None or trial.state in states:
                trials.append(copy.deepcopy(trial) if deepcopy else trial)
        return trials

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class PausedAsPruned(optuna.samplers.BaseSampler):
    """`inner`, shown the study with the trials `paused()` numbers as PRUNED."""

    def __init__(
        self, inner: optuna.samplers.BaseSampler, paused: Callable[[], Container[int]]
    ) -> None:
        self._inner = inner
        self._paused = paused

    def _view(self, study: optuna.Study) -> Any:
        return _StudyView(study, self._paused())

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(self._view(study), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(self._view(study), trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._inner.sample_independent(
            self._view(study), trial, param_name, param_distribution
        )

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()

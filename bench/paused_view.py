"""A sampler that sees paused trials as PRUNED at their last report, as the service's samplers
do (service.pausing.PausedAsPruned, the same view): for the replay (bench/replay.py), whose
paused trials are known by number.

A paused trial is RUNNING in the study (it will resume), and Optuna's TPE counts only COMPLETE
and PRUNED trials among its startup trials and puts every RUNNING one in its "bad" group
(constant liar), whatever it reported. Under asha promotion most trials are paused most of the
time, so TPE stays random search for most of a study. This wrapper hands the inner sampler a
view of the study in which those trials are PRUNED copies (TPE ranks pruned trials by their
last step, then value), and leaves the study itself as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from service.pausing import PausedAsPruned as StudyView


class PausedAsPruned(optuna.samplers.BaseSampler):
    """`inner`, shown the study with the trials `paused()` numbers as PRUNED."""

    def __init__(
        self, inner: optuna.samplers.BaseSampler, paused: Callable[[], Container[int]]
    ) -> None:
        self._inner = inner
        self._paused = paused

    def _view(self, study: optuna.Study) -> Any:
        paused = self._paused()
        return StudyView(study, lambda trial: trial.number in paused)

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

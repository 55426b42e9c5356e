"""Pruning decisions without re-reading every running trial.

Optuna's cached storage re-reads all running trials of a study, with all their attributes, on
every `get_trials` call, so a pruner's `get_trials` costs more as more workers run. The
percentile pruners (median, percentile) compare a trial only with completed trials, which never
change once complete: each study handle keeps them, and reads only the ones completed since it
last looked. Other pruners (successive halving, hyperband) read running trials' rungs
and get the study itself.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Container

import optuna
from optuna.pruners import NopPruner, PercentilePruner, ThresholdPruner
from optuna.trial import FrozenTrial, TrialState

from service import optuna_internals as internals
from service.storage import Backend
from service.study_view import StudyView
from service.warm_start import is_prior

# Pruners that read nothing of the study but its completed trials (or nothing at all).
_COMPLETED_ONLY = (PercentilePruner, ThresholdPruner, NopPruner)


def reads_completed_only(pruner: optuna.pruners.BasePruner) -> bool:
    return isinstance(pruner, _COMPLETED_ONLY)


class CompletedTrials:
    """A study's completed trials, as this process last read them."""

    # More new ones than this are read in one go, with the running trials (a server restart).
    _ONE_BY_ONE = 16

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[int, FrozenTrial] = {}
        self._trials: list[FrozenTrial] = []

    def get(self, study: optuna.Study, backend: Backend, count: int) -> list[FrozenTrial]:
        """The completed trials, `count` of them in the database now; reads only those
        completed since the last call. Prior trials (a warm start's evidence, from another
        study) are left out: their curves are not this study's, and counted among the
        pruner's startup trials they would let it prune after the first real one."""
        if count == len(self._by_id):
            return self._trials
        missing = [
            trial_id
            for trial_id in backend.trial_ids(internals.study_id(study), TrialState.COMPLETE)
            if trial_id not in self._by_id
        ]
        if len(missing) > self._ONE_BY_ONE:
            new = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        else:
            new = [backend.trial(trial_id) for trial_id in missing]
        with self._lock:
            self._by_id.update((internals.trial_id(t), t) for t in new)
            self._trials = sorted(
                (t for t in self._by_id.values() if not is_prior(t)), key=lambda t: t.number
            )
            return self._trials


class CompletedTrialsStudy(StudyView):
    """The study as a percentile pruner sees it: `get_trials` of completed trials answers from
    `completed`; everything else is the study's own."""

    def __init__(self, study: optuna.Study, completed: list[FrozenTrial]) -> None:
        super().__init__(study)
        self._completed = completed

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        if states is None or any(s in states for s in TrialState if s != TrialState.COMPLETE):
            return self._study.get_trials(deepcopy=deepcopy, states=states)
        return copy.deepcopy(self._completed) if deepcopy else list(self._completed)

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

from service.storage import Backend
from service.study_view import StudyView
from service.trial_cache import StudyTrials
from service.warm_start import is_prior

# Pruners that read nothing of the study but its completed trials (or nothing at all).
_COMPLETED_ONLY = (PercentilePruner, ThresholdPruner, NopPruner)


def reads_completed_only(pruner: optuna.pruners.BasePruner) -> bool:
    return isinstance(pruner, _COMPLETED_ONLY)


class CompletedTrials:
    """A study's completed trials, as this process last read them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = -1  # completed trials (priors included) when last read
        self._trials: list[FrozenTrial] = []

    def get(
        self, study: optuna.Study, backend: Backend, count: int, kept: StudyTrials
    ) -> list[FrozenTrial]:
        """The completed trials, `count` of them in the database now. They come from `kept`,
        the finished trials the sampler's view holds (which reads only those finished since
        its last look): each finished trial is read once for both. Prior trials (a warm
        start's evidence, from another study) are left out: their curves are not this
        study's, and counted among the pruner's startup trials they would let it prune after
        the first real one."""
        with self._lock:
            if count == self._count:
                return self._trials
        completed = [t for t in kept.finished(backend, study) if t.state == TrialState.COMPLETE]
        with self._lock:
            self._count = len(completed)
            self._trials = [t for t in completed if not is_prior(t)]
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

"""A study as a sampler or a pruner sees it: some of its trials answered from elsewhere (each
subclass says which), everything else the study's own.

The views: `pruning.CompletedTrialsStudy` (completed trials kept by the process),
`trial_cache.SamplerView` (finished trials kept, unfinished ones with their params only) and
`pausing.PausedAsPruned` (asha's paused trials shown as pruned).
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


class StudyView:
    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        return self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

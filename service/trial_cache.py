"""The study as its sampler sees it, without a full read per claim.

TPE reads the study twice per sample through Optuna's `get_all_trials`, which re-reads every
unfinished trial with all its attributes (five queries and an ORM object per row) and sorts the
whole history each time. Finished trials never change: each study handle keeps them
(`StudyTrials`), and a claim reads only what can have changed since the last look, i.e. trials
made since the highest id seen and those unfinished then, in one light query, whichever server
process wrote them. Unfinished trials are read afresh with only their params (constant liar's
evidence). `SamplerView` hands the sampler that list in place of the study's.
"""

from __future__ import annotations

import bisect
import copy
import logging
import threading
from collections.abc import Container
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, check_distribution_compatibility
from optuna.samplers import TPESampler
from optuna.trial import FrozenTrial, TrialState

from service import optuna_internals as internals
from service.storage import Backend
from service.study_view import StudyView
from service.trial_queries import RELATIVE_PARAMS_PREFIX

logger = logging.getLogger(__name__)


def uses_view(study: optuna.Study) -> bool:
    """Whether claims sample through the view: TPE reads nothing of the study but its trials.
    A Hyperband pruner hands samplers a filtered study of its own (one bracket), so no."""
    return isinstance(study.sampler, TPESampler) and not isinstance(
        study.pruner, optuna.pruners.HyperbandPruner
    )


def _number(trial: FrozenTrial) -> int:
    return trial.number


class StudyTrials:
    """A study's finished trials as this process last read them, and what to look at next."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._finished: dict[int, FrozenTrial] = {}  # by trial id
        self._sorted: list[FrozenTrial] = []  # by number
        self._max_id = -1
        self._open: set[int] = set()  # ids unfinished when last read

    def finished(self, backend: Backend, study: optuna.Study) -> list[FrozenTrial]:
        """The finished trials, as stored now (sorted by number; shared: do not change)."""
        study_id = internals.study_id(study)
        changed = backend.trial_states_since(study_id, *self._where_to_look())
        new = [i for i, state in changed if state.is_finished() and i not in self._finished]
        read = backend.trials_by_id(study_id, new) if new else []
        with self._lock:
            read = [t for t in read if internals.trial_id(t) not in self._finished]  # a race
            for trial in read:
                self._finished[internals.trial_id(trial)] = trial
            for trial_id, state in changed:
                self._max_id = max(self._max_id, trial_id)
                if state.is_finished():
                    self._open.discard(trial_id)
                else:
                    self._open.add(trial_id)
            if read:
                # A new list (callers hold the old one), the new trials inserted by number: a
                # copy and a few inserts, not a sort of the whole history per claim.
                merged = list(self._sorted)
                for trial in sorted(read, key=_number):
                    bisect.insort(merged, trial, key=_number)
                self._sorted = merged
            return self._sorted

    def finished_count(self, backend: Backend, study: optuna.Study) -> int:
        """How many trials are finished now, in one light query: the ones newly finished are
        counted, not read (the next `finished` reads them)."""
        changed = backend.trial_states_since(internals.study_id(study), *self._where_to_look())
        with self._lock:
            new = {i for i, state in changed if state.is_finished() and i not in self._finished}
            return len(self._finished) + len(new)

    def _where_to_look(self) -> tuple[int, set[int]]:
        with self._lock:
            return self._max_id, set(self._open)

    def snapshot(self, backend: Backend, study: optuna.Study) -> tuple[list[FrozenTrial], int]:
        """Every trial a sampler would read now, finished (kept) and unfinished (read now), by
        number; and how many of them are finished."""
        finished = self.finished(backend, study)
        unfinished = backend.unfinished_trials(internals.study_id(study))
        done = {t.number for t in finished}  # finished between the two reads: keep the finished
        trials = finished + [t for t in unfinished if t.number not in done]
        trials.sort(key=lambda t: t.number)
        return trials, len(finished)


class _NoRelativeParamsWrite:
    """The study's storage, but TPE's write of the params it sampled (for other processes'
    constant liar) is dropped: the claim writes the params themselves right after."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not key.startswith(RELATIVE_PARAMS_PREFIX):
            self._storage.set_trial_system_attr(trial_id, key, value)


class SamplerView(StudyView):
    """The study, except that its trials are `trials` (what `StudyTrials.snapshot` read), and
    reads that include running trials also get `pending`: configurations this process sampled
    and has not stored yet, constant liar's evidence like running trials."""

    def __init__(
        self,
        study: optuna.Study,
        trials: list[FrozenTrial],
        pending: list[FrozenTrial] = (),  # type: ignore[assignment]
    ) -> None:
        super().__init__(study)
        self._trials = trials
        self._pending = list(pending)
        self._storage = _NoRelativeParamsWrite(internals.study_storage(study))

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        if states is None:
            # Not the pending ones: the search space's cursor (IntersectionSearchSpace) would
            # stop at their numbers, which are made up.
            trials = self._trials
        else:
            trials = [t for t in self._trials if t.state in states]
            if TrialState.RUNNING in states:
                trials = trials + self._pending
        return copy.deepcopy(trials) if deepcopy else trials


def sample(
    study: optuna.Study | SamplerView,
    trial: FrozenTrial,
    distributions: dict[str, BaseDistribution],
) -> dict[str, Any]:
    """The params `Trial.suggest_*` would give `trial`, with the same sampler calls in the same
    order (optuna/trial/_trial.py, `_suggest`): the relative sample at the first param that is
    not single-valued, then each param from it where it holds one, else independent."""
    sampler = study.sampler
    space: dict[str, BaseDistribution] | None = None
    relative: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for name, dist in distributions.items():
        if dist.single():
            params[name] = optuna.distributions._get_single_value(dist)
            continue
        if space is None:
            space = sampler.infer_relative_search_space(study, trial)  # type: ignore[arg-type]
            relative = sampler.sample_relative(study, trial, space)  # type: ignore[arg-type]
        if name in relative:
            check_distribution_compatibility(space[name], dist)
            value = relative[name]
            if dist._contains(dist.to_internal_repr(value)):
                params[name] = value
                continue
        current = _with_params(trial, params, distributions)
        params[name] = sampler.sample_independent(study, current, name, dist)  # type: ignore[arg-type]
    return params


def _with_params(
    trial: FrozenTrial, params: dict[str, Any], distributions: dict[str, BaseDistribution]
) -> FrozenTrial:
    current = copy.copy(trial)
    current.params = dict(params)
    current.distributions = {k: distributions[k] for k in params}
    return current

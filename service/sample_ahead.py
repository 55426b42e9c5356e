"""Sample ahead: a claim pops a configuration sampled before it arrived instead of waiting for
TPE's fit, which grows with the study's history (tens of ms at 1,000 trials, 100+ at 10,000).

Each time a trial of a study finishes in this process, a background thread samples one
configuration on the study's kept view (`service.trial_cache`) with every finished trial and,
as constant liar's evidence, every running trial and every configuration already waiting in
the pool. The next claim takes it if at most `MAX_LAG` trials finished since it was sampled
(other server processes' finishes included: the claim counts them); a claim that finds a
sample in progress waits for it; otherwise it samples on the view itself, as before.

With one worker this samples exactly what sampling at claim time did (one sample per trial,
after the previous trial finished, in the same order); with several, a configuration misses at
most `MAX_LAG` results, as a claim does that races another worker's completion.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial

from service import optuna_internals as internals
from service.optimizers import pauses
from service.storage import Backend
from service.trial_cache import SamplerView, sample, uses_view

logger = logging.getLogger(__name__)

MAX_LAG = 1  # finished trials a pooled configuration may not have seen
CAPACITY = 4  # configurations held per study at most
WAIT_S = 10.0  # a claim waits at most this long for a sample in progress

# One thread samples for every study of this process: sampling is CPU under the GIL, so more
# threads would not sample faster, only slow request threads down.
_SAMPLER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sample-ahead")


@dataclass(frozen=True)
class Ahead:
    params: dict[str, Any]
    seen: int  # finished trials when it was sampled
    number: int  # its made-up (negative) trial number while it is pending


class SamplePool:
    """One study's configurations sampled ahead, and those taken but not stored yet."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ready: list[Ahead] = []
        self._transit: list[Ahead] = []
        self._sampling = 0
        self._numbers = itertools.count(-2, -1)  # -1 is the trial being sampled

    def pending(self, distributions: dict[str, BaseDistribution]) -> list[FrozenTrial]:
        """The configurations held, as running trials (constant liar's evidence)."""
        with self._cond:
            held = self._ready + self._transit
        return [_running(a.number, a.params, distributions) for a in held]

    def reserve(self) -> bool:
        """Count a sample as in progress now, before it starts, so that a claim arriving
        meanwhile waits for it; False when the pool is full."""
        with self._cond:
            if len(self._ready) + self._sampling >= CAPACITY:
                return False
            self._sampling += 1
            return True

    def refill(self, backend: Backend, handle: Any) -> None:
        """Sample one configuration into the pool (on the background thread, reserved)."""
        try:
            ahead = self._sample(backend, handle)
            with self._cond:
                self._ready.append(ahead)
        except Exception:  # noqa: BLE001 - a claim samples for itself instead
            logger.exception("sampling ahead for %s failed", handle.name)
        finally:
            with self._cond:
                self._sampling -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def params_for(self, backend: Backend, handle: Any, trial: FrozenTrial) -> Iterator[dict]:
        """Params for `trial` (new, running, without params): a fresh pooled configuration, or
        one sampled now. Held as pending (constant liar's evidence for other samples) until
        the block, which stores them, ends."""
        ahead = self._take(handle.trials.finished_count(backend, handle.study))
        if ahead is None:
            ahead = self._sample(backend, handle, trial, hold=True)
        try:
            yield ahead.params
        finally:
            with self._cond:
                self._transit.remove(ahead)

    def _take(self, finished_now: int) -> Ahead | None:
        """The freshest configuration that missed at most MAX_LAG of the `finished_now`
        finished trials, waiting for one being sampled."""

        def fresh() -> list[Ahead]:
            return [a for a in self._ready if finished_now - a.seen <= MAX_LAG]

        with self._cond:
            self._cond.wait_for(lambda: fresh() or not self._sampling, timeout=WAIT_S)
            self._ready = fresh()
            if not self._ready:
                return None
            ahead = max(self._ready, key=lambda a: a.seen)  # the most evidence
            self._ready.remove(ahead)
            self._transit.append(ahead)
            return ahead

    def _sample(
        self, backend: Backend, handle: Any, trial: FrozenTrial | None = None, hold: bool = False
    ) -> Ahead:
        trials, finished = handle.trials.snapshot(backend, handle.study)
        view = SamplerView(handle.study, trials, self.pending(handle.distributions))
        number = next(self._numbers)
        params = sample(view, trial or _running(-1, {}, {}), handle.distributions)
        ahead = Ahead(params, finished, number)
        if hold:
            with self._cond:
                self._transit.append(ahead)
        return ahead


def _running(
    number: int, params: dict[str, Any], distributions: dict[str, BaseDistribution]
) -> FrozenTrial:
    return internals.running_trial(
        number, number, params=params, distributions={k: distributions[k] for k in params}
    )


def serves(handle: Any, backend: Backend) -> bool:
    """Whether a new trial of the study can be made and filled without Optuna's Trial
    (`Backend.new_running_trial`, then `params`): sampled ahead, written as Core statements."""
    return _ahead(handle) and backend.writes_with_core


def _ahead(handle: Any) -> bool:
    """Whether the study samples on the kept view (and so ahead). Not under asha's promotion:
    the view reads unfinished trials with their params only, and samplers must see a paused
    trial as pruned with its curve (service.pausing.PausedAsPruned)."""
    return uses_view(handle.study) and not pauses(handle.spec.pruner)


def fill(backend: Backend, handle: Any, trial: optuna.trial.Trial) -> None:
    """A new trial's params, sampled ahead or now on the kept view, written in one transaction
    (`suggest_*` then returns them). Waiting trials (fixed params) and samplers that read more
    than the study's trials are left to `suggest_*`."""
    if internals.fixed_params(trial) or not _ahead(handle):
        return
    frozen = internals.frozen_copy(trial)
    if frozen.params:
        return
    internals.adopt_params(trial, params(backend, handle, frozen), handle.distributions)


def params(
    backend: Backend, handle: Any, trial: FrozenTrial, worker: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A new trial's params (a running trial without params), sampled ahead or now on the
    kept view, written in one transaction (with the worker's row: `Backend.set_params`)."""
    with handle.ahead.params_for(backend, handle, trial) as sampled:
        backend.set_params(internals.trial_id(trial), sampled, handle.distributions, worker)
    return sampled


def after_finish(backend: Backend, handle: Any) -> None:
    """A trial of the study finished here: sample the next claim's configuration now."""
    if _ahead(handle) and handle.ahead.reserve():
        _SAMPLER.submit(handle.ahead.refill, backend, handle)

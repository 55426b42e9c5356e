"""Claims: a worker asks for a trial and gets one, with a lease, or nothing (204).

A waiting trial (the baseline, a retry) goes out before a new one. Only the budget check and
the trial's creation are serialised (the claim lock, across server processes); sampling, most
of a claim's time with TPE, runs after, in parallel with other claims.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial

from service import keys, sample_ahead
from service import optuna_internals as internals
from service.budget import Budget
from service.errors import NotFound
from service.grid import ServerGridSampler, grid_left
from service.metrics import Metrics
from service.optimizers import pauses
from service.pausing import PausedAsPruned, Pausing
from service.preflight import Preflights
from service.registry import StudyHandle, StudyRegistry
from service.scheduling import Candidate, below_limit, order, serves
from service.schemas import ClaimedTrial, Resume, TrialClaim
from service.storage import Backend
from service.trial_cache import uses_view
from service.views import retry_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Started:
    trial_id: int
    trial: optuna.trial.Trial | None  # None: read after the claim lock (a new trial)
    resume: Resume | None  # a promoted trial's checkpoint
    new: FrozenTrial | None = None  # a new trial sampled ahead: as created, no Trial object

    def opened(self, study: optuna.Study) -> optuna.trial.Trial:
        return self.trial or optuna.trial.Trial(study, self.trial_id)


class _PromotionLater:
    """No trial now; a running one may make a paused one rank for promotion when it reports."""


_PROMOTION_LATER = _PromotionLater()


@dataclass(frozen=True)
class NothingYet:
    """No trial now, but soon: a worker that exits when idle should ask again."""

    retry_after_s: int


class Claims:
    def __init__(
        self,
        backend: Backend,
        registry: StudyRegistry,
        metrics: Metrics,
        heartbeat_interval: float,
        preflights: Preflights,
        pausing: Pausing,
    ) -> None:
        self._backend = backend
        self._pausing = pausing
        self._preflights = preflights
        self._registry = registry
        self._metrics = metrics
        self._heartbeat_interval = heartbeat_interval

    def claim(self, request: TrialClaim) -> ClaimedTrial | NothingYet | None:
        """A trial; or NothingYet when a study this worker may serve has work it cannot hand
        out yet (its preflight runs elsewhere, or a running trial may make a paused one rank
        for promotion); or None: nothing to run."""
        fields = {"host": request.host, "device": request.device, "labels": request.labels}
        waiting = False
        for handle in self._claimable(request):
            # The new trial already counts as running once the lock is released, so the
            # budget stays exact while it is sampled.
            with self._backend.claim_lock.hold(handle.study_id):
                gate = self._preflights.gate(handle, request.preflight)
                waiting = waiting or gate == "wait"
                started = (
                    None
                    if gate in ("none", "wait")
                    else self._start_trial(handle, _worker_attrs(request))
                )
                if started is _PROMOTION_LATER:  # a running trial may make a paused one rank
                    waiting, started = True, None
                if isinstance(started, _Started) and gate == "flag":
                    self._preflights.flagged(handle, started.trial_id)
            if isinstance(started, _Started):
                # Out of the lock (claims of a study queue on it): should this process die
                # before the heartbeat is recorded, the lease sweep finds the trial. A trial
                # made with Core statements was created with its first heartbeat.
                if started.new is None:
                    self._backend.record_heartbeat(started.trial_id)
                worker = {"worker_id": request.worker_id, "study": handle.name, **fields}
                trial = self._hand_out(handle, started, request, gate == "flag", worker)
                self._metrics.claims.labels(handle.name).inc()
                return trial
        self._backend.touch_worker(
            request.worker_id, study=None, trial_number=None, trial_id=None, **fields
        )
        return (
            NothingYet(retry_after_s=max(1, round(self._heartbeat_interval))) if waiting else None
        )

    def _claimable(self, request: TrialClaim) -> Iterator[StudyHandle]:
        """The studies to try, in order. Only the active ones (not done, not stopped) are read:
        finished history costs a claim nothing. Whether a study's budget allows a trial is
        left to the count under its claim lock (`Budget`, the one definition of what
        n_trials counts), which also marks a study done for good."""
        if request.study:
            handle = self._registry.get(request.study)  # 404 for an unknown study
            allowed = (
                serves(request.labels, handle.spec.scheduling.requires)
                and request.study not in request.exclude
            )
            if allowed and not self._registry.is_stopped(handle):
                yield handle
            return
        candidates = []
        excluded = set(request.exclude)
        for rank, study in enumerate(self._backend.active_studies()):
            row = study.row
            if row.name in excluded:
                continue
            try:
                handle = self._registry.open(row.study_id, row.name, row.spec_version)
            except NotFound:  # deleted meanwhile
                continue
            candidates.append(Candidate(handle, handle.spec.scheduling, study.running, rank))
        for handle in order(candidates, request.labels):
            yield handle  # type: ignore[misc]

    def _budget(self, handle: StudyHandle) -> Budget:
        census = self._backend.trial_census(handle.study_id)
        sampler = handle.study.sampler
        assigned = (
            self._backend.grid_ids(handle.study_id)
            if isinstance(sampler, ServerGridSampler)
            else ()
        )
        return Budget.from_census(*census, handle.spec.n_trials, grid_left(sampler, assigned))

    def _start_trial(
        self, handle: StudyHandle, attrs: dict[str, Any]
    ) -> _Started | _PromotionLater | None:
        """Under the claim lock: a running trial with the worker's `attrs`, if the budget
        allows one: a waiting one first, then a paused one that ranks for promotion (asha),
        then a new configuration."""
        budget = self._budget(handle)
        counts = budget.counts
        if not below_limit(handle.spec.scheduling, counts.running):
            return None
        # Once no configuration is left to sample and nothing runs, no rung can grow.
        draining = not budget.can_sample() and not counts.running
        promoted = (
            self._pausing.promote(handle, draining)
            if counts.paused and not counts.waiting
            else None
        )
        # ask() pops a waiting trial. Waiting trials are only made under this lock, so the
        # census is still true here.
        if counts.waiting:
            trial = handle.study.ask()
            self._set_worker_attrs(trial, attrs)
            return _Started(internals.trial_id(trial), trial, None)
        if promoted is not None:
            trial_id, resume = promoted
            self._backend.set_user_attrs(trial_id, attrs)
            return _Started(trial_id, optuna.trial.Trial(handle.study, trial_id), resume)
        if budget.can_sample() and sample_ahead.serves(handle, self._backend):
            new = self._backend.new_running_trial(handle.study_id, attrs)
            return _Started(internals.trial_id(new), None, None, new)
        if budget.can_sample():
            trial_id = self._backend.create_running_trial(handle.study, attrs)
            # Opening the Trial runs the sampler's before_trial, which must run under the lock
            # for some (the grid picks a combination no trial holds); TPE's does nothing, so a
            # TPE claim reads its new trial after the lock.
            opened = None if uses_view(handle.study) else optuna.trial.Trial(handle.study, trial_id)
            return _Started(trial_id, opened, None)
        if counts.paused and counts.running:
            return _PROMOTION_LATER
        if counts.paused:  # nothing runs, nothing new, nothing to drain: they are done
            self._pausing.end_paused(handle)
            self._backend.mark_done(handle.study_id, handle.version)
        elif budget.ended():
            self._backend.mark_done(handle.study_id, handle.version)
        return None

    def _set_worker_attrs(self, trial: optuna.trial.Trial, attrs: dict[str, Any]) -> None:
        """On a trial that waited: the worker's attrs, and none of the per-run attrs a retry
        copied from its predecessor."""
        copied = trial.user_attrs
        cleared = {k: None for k in keys.PER_RUN if copied.get(k) is not None}
        for key, value in {**cleared, **attrs}.items():
            trial.set_user_attr(key, value)  # the Trial's own copy of its attrs follows

    def _hand_out(
        self,
        handle: StudyHandle,
        started: _Started,
        request: TrialClaim,
        preflight: bool,
        worker: dict[str, Any],
    ) -> ClaimedTrial:
        """A promoted trial resumes where it paused; a retry from its predecessor's
        checkpoint; a new trial starts afresh. `worker`: the worker's row (`touch_worker`),
        written with the trial's number and id."""
        frozen = started.new
        if frozen is not None:  # sampled ahead, no Optuna Trial
            holds = {"trial_number": frozen.number, "trial_id": started.trial_id}
            frozen.params = sample_ahead.params(
                self._backend, handle, frozen, {**worker, **holds}
            )  # the params and the worker's row in one transaction
            frozen.distributions = {k: handle.distributions[k] for k in frozen.params}
        else:
            trial = started.opened(handle.study)
            if pauses(handle.spec.pruner):
                trial.study = PausedAsPruned(handle.study)  # type: ignore[assignment]
            else:
                sample_ahead.fill(self._backend, handle, trial)  # a new trial: ahead, or now
            _suggest_all(trial, handle.distributions)  # a waiting or promoted trial's, or samples
            frozen = internals.frozen_copy(trial)
            self._backend.touch_worker(
                **worker, trial_number=frozen.number, trial_id=internals.trial_id(frozen)
            )
        resume = started.resume or self._resume(handle, frozen)
        logger.info(
            "trial %d of %s -> %s%s%s",
            frozen.number,
            handle.name,
            request.worker_id,
            f" (resuming after epoch {resume.epoch})" if resume else "",
            " (preflight first)" if preflight else "",
        )
        return ClaimedTrial(
            trial_id=internals.trial_id(frozen),
            study=handle.name,
            number=frozen.number,
            params=frozen.params,
            config=handle.config(frozen.params),
            spec=handle.spec.model_dump(mode="json"),  # defaults filled in: the worker has none
            seed=handle.spec.training.seed,
            is_baseline=bool(frozen.user_attrs.get(keys.BASELINE)),
            heartbeat_interval=self._heartbeat_interval,
            resume=resume,
            preflight=preflight,
        )

    def _resume(self, handle: StudyHandle, trial: FrozenTrial) -> Resume | None:
        """A retried trial continues from its predecessor's last checkpoint: copy the epochs the
        checkpoint covers so the learning curve (and the pruner) sees them."""
        previous = retry_of(trial)
        if previous is None:
            return None
        trial_id = internals.trial_id(trial)
        self._backend.set_user_attrs(trial_id, {keys.RETRY_OF: previous})
        checkpoint = trial.system_attrs.get(keys.CHECKPOINT)
        if not checkpoint:
            return None
        epoch = int(checkpoint["epoch"])
        predecessor = self._backend.trial_by_number(handle.study_id, previous)
        self._backend.set_curve(
            trial_id,
            {
                step: value
                for step, value in predecessor.intermediate_values.items()
                if step <= epoch
            },
        )
        self._backend.set_user_attrs(trial_id, {keys.RESUMED_FROM_EPOCH: epoch + 1})
        return Resume(epoch=epoch, checkpoint_url=f"/api/v1/trials/{trial_id}/checkpoint")


def _worker_attrs(request: TrialClaim) -> dict[str, Any]:
    attrs: dict[str, Any] = {keys.WORKER: request.worker_id}
    if request.device:
        attrs[keys.DEVICE] = request.device
    return attrs


def _suggest_all(trial: optuna.trial.Trial, distributions: dict[str, BaseDistribution]) -> None:
    for name, dist in distributions.items():
        if isinstance(dist, FloatDistribution):
            trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
        elif isinstance(dist, IntDistribution):
            trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
        else:
            trial.suggest_categorical(name, dist.choices)  # type: ignore[attr-defined]

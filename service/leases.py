"""Leases: a claimed trial belongs to its worker while heartbeats arrive.

Leases are Optuna heartbeats: a claim records one, every message renews it, and `sweep` fails
trials whose heartbeat is older than the grace period and re-queues them with the same params
(Optuna's retry callback, which records `retry_history`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from service import keys
from service.errors import Conflict, NotFound
from service.metrics import Metrics
from service.optimizers import pauses
from service.registry import StudyHandle, StudyRegistry
from service.storage import Backend

logger = logging.getLogger(__name__)

# Optuna 4.9 renamed RetryFailedTrialCallback (the old name goes away in 6.0).
_RETRY_CALLBACK = (
    getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    or optuna.storages.RetryFailedTrialCallback
)


def lease_ended(handle: StudyHandle, number: int, state: TrialState) -> Conflict:
    """The answer to a message about a trial that is no longer running."""
    return Conflict(f"trial {number} of {handle.name} is {state.name.lower()}: its lease has ended")


def paused_lease(handle: StudyHandle, number: int, epoch: int) -> Conflict:
    """The answer to a worker's message about a trial that it paused (asha)."""
    return Conflict(
        f"trial {number} of {handle.name} is paused after epoch {epoch}: its lease has ended"
    )


def check_holder(
    handle: StudyHandle, number: int, holder: str | None, worker_id: str | None
) -> None:
    """A message that names its worker (`worker_id`) must come from the trial's holder. After a
    study is deleted, SQLite gives the highest trial ids to new trials: a late message about a
    deleted trial could otherwise report into, or fail, another study's trial."""
    if worker_id is not None and holder is not None and holder != worker_id:
        raise Conflict(
            f"trial {number} of {handle.name} is held by worker {holder}, not "
            f"{worker_id}: your trial is gone and its lease has ended"
        )


def running_trial(
    registry: StudyRegistry, trial_id: int, worker_id: str | None = None
) -> tuple[StudyHandle, FrozenTrial]:
    """The trial and its study, when it is running (and held by `worker_id`, when given).
    Raises NotFound or Conflict."""
    handle, trial = registry.for_trial(trial_id)
    check_holder(handle, trial.number, trial.user_attrs.get(keys.WORKER), worker_id)
    if trial.state != TrialState.RUNNING:
        raise lease_ended(handle, trial.number, trial.state)
    paused = trial.user_attrs.get(keys.PAUSED_AFTER_EPOCH)
    if paused is not None:
        raise paused_lease(handle, trial.number, paused)
    return handle, trial


class Leases:
    def __init__(
        self,
        backend: Backend,
        registry: StudyRegistry,
        metrics: Metrics,
        heartbeat_interval: float,
        max_retries: int,
    ) -> None:
        self._backend = backend
        self._registry = registry
        self._metrics = metrics
        self._interval = heartbeat_interval
        self._retry = _RETRY_CALLBACK(max_retry=max_retries)
        self._renewed: dict[int, float] = {}
        self._swept: set[tuple[int, str]] = set()  # studies with running trials last sweep

    def on_stale(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna's heartbeat machinery calls this for each trial it failed as stale."""
        self._metrics.stale_trials.labels(study.study_name).inc()
        logger.warning(
            "trial %d of %s: worker %s stopped sending heartbeats",
            trial.number,
            study.study_name,
            trial.user_attrs.get(keys.WORKER),
        )
        self.requeue(study, trial)

    def requeue(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """A waiting copy of a failed trial, with the same params, unless its retries are
        spent."""
        before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        self._retry(study, trial)
        if len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) > before:
            self._metrics.retries.labels(study.study_name).inc()

    def renew(self, trial_id: int) -> None:
        """Reports renew the lease too, but at most twice a heartbeat interval: a database
        write per report would cost more than the lease needs."""
        now = time.monotonic()
        if now - self._renewed.get(trial_id, -math.inf) >= self._interval / 2:
            self._backend.record_heartbeat(trial_id)
            self._renewed[trial_id] = now
            if len(self._renewed) > 10_000:  # forget finished trials now and then
                self._renewed = {k: v for k, v in self._renewed.items() if now - v < 3600}

    def sweep(self, fail_stale: bool, collect: Callable[[StudyHandle], None]) -> None:
        """Fail stale trials and re-queue them; `collect` unneeded artifacts. Only the studies
        with running trials are visited (found through an index on the trials' state), and once
        more the round after their last trial ended, for a last collection: finished studies
        cost a sweep nothing.

        A running trial with no heartbeat at all (its server died while handing it out) gets
        one now, so that it goes stale after a grace period like any other lost lease.
        `fail_stale` is False while the database has only just come back: workers could not
        renew their leases while it was away."""
        running = set(self._backend.running_trials())
        visit, self._swept = running | self._swept, running
        for study_id, name in sorted(visit):
            try:
                handle = self._registry.get(name)
                if handle.study_id != study_id:  # deleted and created again meanwhile
                    continue
                if (study_id, name) in running:
                    self._end_stale_leases(handle, fail_stale)
                collect(handle)
            except NotFound:  # deleted meanwhile, or not a study of hpsearch's
                continue

    def _end_stale_leases(self, handle: StudyHandle, fail_stale: bool) -> None:
        with self._backend.claim_lock.hold(handle.study_id):
            for trial_id in self._backend.running_without_heartbeat(handle.study_id):
                logger.warning(
                    "trial id %d of %s has no lease; starting one", trial_id, handle.name
                )
                self._backend.record_heartbeat(trial_id)
            if pauses(handle.spec.pruner):  # paused trials' leases are the server's own
                self._backend.keep_paused_leases(handle.study_id)
            if fail_stale:
                optuna.storages.fail_stale_trials(handle.study)

"""The trial protocol workers pull from: claim, report, heartbeat, complete, fail, plus the
checkpoints and weights they upload, the lease sweep and artifact garbage collection.

Leases are Optuna heartbeats: a claim records one, every message renews it, and `sweep` fails
trials whose heartbeat is older than the grace period and re-queues them with the same params.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any, BinaryIO

import optuna
from optuna.artifacts import upload_artifact
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from service import metrics
from service.budget import Budget
from service.errors import Conflict, InvalidInput, NotFound
from service.grid import ServerGridSampler
from service.pruning import CompletedTrialsStudy, reads_completed_only
from service.registry import StudyHandle, StudyRegistry
from service.schemas import ClaimedTrial, ReportAnswer, Resume, TrialAck, TrialClaim
from service.settings import Settings
from service.storage import ARTIFACT_PREFIX, Backend, TrialFacts
from service.views import CHECKPOINT_ATTR, WEIGHTS_ATTR, ranked, retry_of, state_name

logger = logging.getLogger(__name__)

_RUNNING_ONLY = "trial {number} of {study} is {state}: its lease has ended"

# Optuna 4.9 renamed RetryFailedTrialCallback (the old name goes away in 6.0).
_RETRY_CALLBACK = getattr(
    optuna.storages, "RetryHeartbeatStaleTrialCallback", None
) or optuna.storages.RetryFailedTrialCallback

# User attrs a retry inherits from the trial it retries that describe that trial's own run.
_PER_RUN_ATTRS = ("fail_reason", "val_accuracy", "resumed_from_epoch", "device")


class TrialProtocol:
    def __init__(self, backend: Backend, registry: StudyRegistry, settings: Settings) -> None:
        self._backend = backend
        self._registry = registry
        self._settings = settings
        self._retry = _RETRY_CALLBACK(max_retry=settings.max_retries)
        self._collected: set[str] = set()
        self._renewed: dict[int, float] = {}

    # --- leases --------------------------------------------------------------------------------
    def on_stale(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna's heartbeat machinery calls this for each trial it failed as stale."""
        metrics.STALE_TRIALS.labels(study.study_name).inc()
        logger.warning("trial %d of %s: worker %s stopped sending heartbeats", trial.number,
                       study.study_name, trial.user_attrs.get("worker"))
        self._requeue(study, trial)

    def _requeue(self, study: optuna.Study, trial: FrozenTrial) -> None:
        before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        self._retry(study, trial)
        if len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) > before:
            metrics.RETRIES.labels(study.study_name).inc()

    def sweep(self, fail_stale: bool = True) -> None:
        """Fail stale trials of every study and re-queue them; collect unneeded artifacts.

        A running trial with no heartbeat at all (its server died while handing it out) gets
        one now, so that it goes stale after a grace period like any other lost lease.
        `fail_stale` is False while the database has only just come back: workers could not
        renew their leases while it was away."""
        for name in self._registry.names():
            try:
                handle = self._registry.get(name)
                with self._backend.claim_lock.hold(handle.study_id):
                    for trial_id in self._backend.running_without_heartbeat(handle.study_id):
                        logger.warning("trial id %d of %s has no lease; starting one", trial_id,
                                       name)
                        self._backend.storage.record_heartbeat(trial_id)
                    if fail_stale:
                        optuna.storages.fail_stale_trials(handle.study)
                self.collect_garbage(handle)
            except NotFound:
                continue

    # --- claim ---------------------------------------------------------------------------------
    def claim(self, request: TrialClaim) -> ClaimedTrial | None:
        fields = {"host": request.host, "device": request.device}
        for handle in self._claimable(request.study):
            name = handle.name
            if self._registry.is_stopped(handle):
                continue
            # Only the budget check and the trial's creation are serialised; sampling (TPE
            # takes most of a claim's time) runs after, in parallel with other claims. The new
            # trial already counts as running, so the budget stays exact.
            with self._backend.claim_lock.hold(handle.study_id):
                started = self._start_trial(handle, _worker_attrs(request))
            if started is not None:
                trial = self._hand_out(handle, started, request)
                self._backend.touch_worker(
                    request.worker_id, study=name, trial_number=trial.number,
                    trial_id=trial.trial_id, **fields,
                )
                metrics.CLAIMS.labels(name).inc()
                return trial
        self._backend.touch_worker(
            request.worker_id, study=None, trial_number=None, trial_id=None, **fields
        )
        return None

    def _claimable(self, study: str | None) -> Iterator[StudyHandle]:
        if study:
            yield self._registry.get(study)  # 404 for an unknown study
            return
        for name in self._registry.names():
            try:
                yield self._registry.get(name)
            except NotFound:  # deleted meanwhile
                continue

    def _start_trial(
        self, handle: StudyHandle, attrs: dict[str, Any]
    ) -> optuna.trial.Trial | None:
        """Under the claim lock: a running trial with the worker's `attrs`, if the budget
        allows one."""
        census = self._backend.trial_census(handle.study_id)
        sampler = handle.study.sampler
        left = (len(sampler.left(self._backend.grid_ids(handle.study_id)))
                if isinstance(sampler, ServerGridSampler) else None)
        budget = Budget.from_census(*census, handle.spec.n_trials, left)
        if budget.counts.waiting == 0 and not budget.can_sample():
            return None
        # A waiting trial (the baseline, a retry) goes out before a new one: ask() pops it.
        # Waiting trials are only made under this lock, so the census is still true here.
        if budget.counts.waiting:
            trial = handle.study.ask()
            self._set_worker_attrs(trial, attrs)
        else:
            trial = self._new_trial(handle.study, attrs)
        # Should this process die before the heartbeat is recorded, the sweep finds the trial.
        self._backend.storage.record_heartbeat(trial._trial_id)
        return trial

    def _new_trial(self, study: optuna.Study, attrs: dict[str, Any]) -> optuna.trial.Trial:
        """What study.ask() does when no trial waits, without its read of every unfinished
        trial to look for one (the sampler reads them again right after); the trial is
        created with the worker's attrs in the same transaction."""
        study._thread_local.cached_all_trials = None  # as ask(): the sampler reads afresh
        template = FrozenTrial(
            number=0, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(),
            datetime_complete=None, params={}, distributions={}, user_attrs=attrs,
            system_attrs={}, intermediate_values={}, trial_id=0,
        )
        trial_id = self._backend.storage.create_new_trial(study._study_id, template)
        return optuna.trial.Trial(study, trial_id)

    def _set_worker_attrs(self, trial: optuna.trial.Trial, attrs: dict[str, Any]) -> None:
        """On a trial that waited: the worker's attrs, and none of the per-run attrs a retry
        copied from its predecessor."""
        copied = trial.user_attrs
        attrs = {**{k: None for k in _PER_RUN_ATTRS if copied.get(k) is not None}, **attrs}
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

    def _hand_out(self, handle: StudyHandle, trial: optuna.trial.Trial,
                  request: TrialClaim) -> ClaimedTrial:
        _suggest_all(trial, handle.distributions)  # a waiting trial's fixed params, or samples
        # The trial as ask() read it (its attrs as set since), with the params just suggested:
        # reading it again from the database would cost a full read of a running trial.
        frozen = copy.deepcopy(trial._cached_frozen_trial)
        resume = self._resume(handle, frozen)
        logger.info("trial %d of %s -> %s%s", frozen.number, handle.name, request.worker_id,
                    f" (resuming after epoch {resume.epoch})" if resume else "")
        return ClaimedTrial(
            trial_id=frozen._trial_id,
            study=handle.name,
            number=frozen.number,
            params=frozen.params,
            config=handle.config(frozen.params),
            spec=handle.spec.model_dump(mode="json"),
            seed=handle.spec.training.seed,
            is_baseline=bool(frozen.user_attrs.get("baseline")),
            heartbeat_interval=self._settings.heartbeat_interval,
            resume=resume,
        )

    def _resume(self, handle: StudyHandle, trial: FrozenTrial) -> Resume | None:
        """A retried trial continues from its predecessor's last checkpoint: copy the epochs the
        checkpoint covers so the learning curve (and the pruner) sees them."""
        previous = retry_of(trial)
        if previous is None:
            return None
        self._backend.storage.set_trial_user_attr(trial._trial_id, "retry_of", previous)
        checkpoint = trial.system_attrs.get(CHECKPOINT_ATTR)
        if not checkpoint:
            return None
        epoch = int(checkpoint["epoch"])
        storage = self._backend.storage
        predecessor = storage.get_trial(
            storage.get_trial_id_from_study_id_trial_number(handle.study_id, previous)
        )
        for step, value in sorted(predecessor.intermediate_values.items()):
            if step <= epoch:
                storage.set_trial_intermediate_value(trial._trial_id, step, value)
        self._backend.storage.set_trial_user_attr(trial._trial_id, "resumed_from_epoch", epoch + 1)
        return Resume(epoch=epoch, checkpoint_url=f"/api/v1/trials/{trial._trial_id}/checkpoint")

    # --- messages from the worker holding the lease --------------------------------------------
    def _running(self, trial_id: int) -> tuple[StudyHandle, FrozenTrial]:
        handle, trial = self._registry.for_trial(trial_id)
        if trial.state != TrialState.RUNNING:
            raise Conflict(_RUNNING_ONLY.format(number=trial.number, study=handle.name,
                                                state=state_name(trial.state)))
        return handle, trial

    def _renew_lease(self, trial_id: int) -> None:
        """Reports renew the lease too, but at most twice a heartbeat interval: a database
        write per report would cost more than the lease needs."""
        now = time.monotonic()
        if now - self._renewed.get(trial_id, -math.inf) >= self._settings.heartbeat_interval / 2:
            self._backend.storage.record_heartbeat(trial_id)
            self._renewed[trial_id] = now
            if len(self._renewed) > 10_000:  # forget finished trials now and then
                self._renewed = {k: v for k, v in self._renewed.items() if now - v < 3600}

    def heartbeat(self, trial_id: int) -> None:
        handle, facts = self._registry.facts(trial_id)
        if facts.state != TrialState.RUNNING:
            raise Conflict(_RUNNING_ONLY.format(number=facts.number, study=handle.name,
                                                state=state_name(facts.state)))
        self._backend.storage.record_heartbeat(trial_id)
        if facts.worker:
            self._backend.touch_worker(facts.worker, study=handle.name,
                                       trial_number=facts.number, trial_id=trial_id)

    def report(
        self, trial_id: int, epoch: int, val_loss: float, val_accuracy: float | None
    ) -> ReportAnswer:
        handle, facts = self._registry.facts(trial_id)
        values = facts.intermediate_values  # our own copy
        if facts.state == TrialState.PRUNED and epoch in values:
            return ReportAnswer(prune=True)  # the same report again, after it pruned the trial
        if facts.state != TrialState.RUNNING:
            raise Conflict(_RUNNING_ONLY.format(number=facts.number, study=handle.name,
                                                state=state_name(facts.state)))
        storage = self._backend.storage
        self._renew_lease(trial_id)
        if epoch not in values:  # else a retried report: answer it again
            expected = max(values, default=-1) + 1
            if epoch != expected:
                raise InvalidInput(f"epochs must be reported in order: expected epoch {expected}",
                                   field="epoch")
            if val_accuracy is not None:
                storage.set_trial_user_attr(trial_id, "val_accuracy", val_accuracy)
            storage.set_trial_intermediate_value(trial_id, epoch, val_loss)
            values[epoch] = val_loss
        metrics.REPORTS.labels(handle.name).inc()
        # A trial that has trained its last epoch is not pruned: its result is complete.
        last_epoch = epoch >= handle.spec.training.epochs - 1
        prune = not last_epoch and self._should_prune(handle, facts)
        if prune:
            self._finish(handle, facts.number, trial_id, TrialState.PRUNED)
            logger.info("trial %d of %s pruned after epoch %d", facts.number, handle.name, epoch)
            self._finished(handle, facts.worker, facts.has_artifacts)
        return ReportAnswer(prune=prune)

    def _should_prune(self, handle: StudyHandle, facts: TrialFacts) -> bool:
        """What Trial.should_prune asks, reading no more of the study than the pruner needs."""
        pruner = handle.study.pruner
        if reads_completed_only(pruner):
            completed = handle.completed.get(handle.study, self._backend,
                                             facts.completed_in_study)
            return pruner.prune(CompletedTrialsStudy(handle.study, completed),  # type: ignore[arg-type]
                                facts.frozen())
        return pruner.prune(handle.study, self._backend.storage.get_trial(facts.trial_id))

    def complete(self, trial_id: int, val_loss: float, val_accuracy: float | None) -> TrialAck:
        handle, facts = self._registry.facts(trial_id)
        if facts.state == TrialState.COMPLETE:
            return TrialAck(trial_id=trial_id, state="complete")  # a retried completion
        if facts.state != TrialState.RUNNING:
            raise Conflict(_RUNNING_ONLY.format(number=facts.number, study=handle.name,
                                                state=state_name(facts.state)))
        # If it finished meanwhile, _finish says how.
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if val_accuracy is not None:
                self._backend.storage.set_trial_user_attr(trial_id, "val_accuracy", val_accuracy)
        ended = self._finish(handle, facts.number, trial_id, TrialState.COMPLETE, val_loss)
        if ended != TrialState.COMPLETE:  # the lease sweep failed it, or a report pruned it
            raise Conflict(_RUNNING_ONLY.format(number=facts.number, study=handle.name,
                                                state=state_name(ended)))
        logger.info("trial %d of %s complete: val_loss %.4g", facts.number, handle.name,
                    val_loss)
        self._finished(handle, facts.worker, facts.has_artifacts)
        return TrialAck(trial_id=trial_id, state="complete")

    def fail(self, trial_id: int, reason: str, retry: bool) -> TrialAck:
        handle, trial = self._running(trial_id)
        # Under the claim lock: between the FAIL and the re-queued copy, a claim would count
        # one trial fewer in flight and sample one too many.
        with self._backend.claim_lock.hold(handle.study_id):
            handle, trial = self._running(trial_id)
            self._backend.storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            # The sweep takes the same lock: FAIL can only be ours.
            ended = self._finish(handle, trial.number, trial_id, TrialState.FAIL)
            if ended != TrialState.FAIL:  # completed or pruned meanwhile
                raise Conflict(_RUNNING_ONLY.format(number=trial.number, study=handle.name,
                                                    state=state_name(ended)))
            logger.info("trial %d of %s failed%s: %s", trial.number, handle.name,
                        " (handed back)" if retry else "", reason)
            if retry:
                self._requeue(handle.study, self._backend.storage.get_trial(trial_id))
        self._finished(handle, trial.user_attrs.get("worker"), _has_artifacts(trial))
        return TrialAck(trial_id=trial_id, state="fail")

    def _finish(self, handle: StudyHandle, number: int, trial_id: int, state: TrialState,
                value: float | None = None) -> TrialState:
        """Tell Optuna how the trial ended; returns the state it is in afterwards. Another
        request or server process may have finished it first (the same message sent twice at
        once, the lease sweep): then the state is the one they gave it."""
        try:
            return handle.study.tell(number, value, state=state, skip_if_finished=True).state
        except optuna.exceptions.UpdateFinishedTrialError:  # finished between check and write
            return self._backend.storage.get_trial(trial_id).state

    def _finished(self, handle: StudyHandle, worker: str | None, had_artifacts: bool) -> None:
        if worker:
            self._backend.touch_worker(worker, study=None, trial_number=None, trial_id=None)
        # A finished trial's checkpoint goes now. Weights that drop out of the top k because a
        # trial without any got better wait for the lease keeper's sweep, which collects too:
        # collecting walks every trial, too much for each message.
        if had_artifacts:
            self.collect_garbage(handle)

    # --- artifacts -----------------------------------------------------------------------------
    def save_checkpoint(self, trial_id: int, epoch: int, body: Iterator[bytes] | bytes) -> None:
        handle, trial = self._running(trial_id)
        if epoch not in trial.intermediate_values:
            raise InvalidInput(f"epoch {epoch} has not been reported yet", field="epoch")
        artifact_id = self._upload(trial, body, f"checkpoint-{trial.number}-epoch{epoch}.pt")
        previous = trial.system_attrs.get(CHECKPOINT_ATTR)
        self._backend.storage.set_trial_system_attr(
            trial_id, CHECKPOINT_ATTR, {"artifact_id": artifact_id, "epoch": epoch}
        )
        self._backend.storage.record_heartbeat(trial_id)
        if previous:
            self._remove(previous["artifact_id"])

    def save_weights(self, trial_id: int, body: Iterator[bytes] | bytes) -> None:
        _handle, trial = self._running(trial_id)
        artifact_id = self._upload(trial, body, f"weights-{trial.number}.pt")
        self._backend.storage.set_trial_system_attr(trial_id, WEIGHTS_ATTR, artifact_id)

    def open_checkpoint(self, trial_id: int) -> BinaryIO:
        _handle, trial = self._registry.for_trial(trial_id)
        checkpoint = trial.system_attrs.get(CHECKPOINT_ATTR)
        if not checkpoint:
            raise NotFound(f"trial {trial.number} has no checkpoint")
        return self._open(checkpoint["artifact_id"], "checkpoint")

    def open_weights(self, study: str, number: int) -> BinaryIO:
        handle = self._registry.get(study)
        trials = handle.study.get_trials(deepcopy=False)
        trial = next((t for t in trials if t.number == number), None)
        if trial is None:
            raise NotFound(f"study {study!r} has no trial {number}")
        artifact_id = trial.system_attrs.get(WEIGHTS_ATTR)
        top = {t.number for t in ranked(trials)[: self._settings.keep_top_k]}
        if artifact_id is None or number not in top:
            raise NotFound(f"trial {number} of {study!r} has no kept weights (only the top "
                           f"{self._settings.keep_top_k} complete trials keep theirs)")
        return self._open(artifact_id, "weights")

    def _open(self, artifact_id: str, what: str) -> BinaryIO:
        try:
            return self._backend.artifacts.open_reader(artifact_id)
        except Exception as exc:
            raise NotFound(f"the {what} file is gone from the artifact store") from exc

    def _upload(self, trial: FrozenTrial, body: Iterator[bytes] | bytes, filename: str) -> str:
        folder = tempfile.mkdtemp(prefix="hpsearch-upload-")
        path = os.path.join(folder, filename)
        try:
            with open(path, "wb") as out:
                if isinstance(body, bytes):
                    out.write(body)
                else:
                    for chunk in body:
                        out.write(chunk)
            return upload_artifact(
                artifact_store=self._backend.artifacts,
                file_path=path,
                study_or_trial=trial,
                storage=self._backend.storage,
                mimetype="application/octet-stream",
            )
        finally:
            if os.path.exists(path):
                os.remove(path)
            os.rmdir(folder)

    def _remove(self, artifact_id: str) -> None:
        if artifact_id in self._collected:
            return
        try:
            self._backend.artifacts.remove(artifact_id)
        except Exception:  # removed by another server process
            logger.debug("artifact %s already gone", artifact_id)
        self._collected.add(artifact_id)

    def collect_garbage(self, handle: StudyHandle) -> None:
        """Keep the checkpoints a running or waiting trial may resume from and the weights of the
        top-k complete trials; remove every other artifact of the study."""
        trials = handle.study.get_trials(deepcopy=False)
        keep: set[str] = set()
        for t in trials:
            if t.state in (TrialState.RUNNING, TrialState.WAITING):
                checkpoint = t.system_attrs.get(CHECKPOINT_ATTR)
                if checkpoint:
                    keep.add(checkpoint["artifact_id"])
        for t in ranked(trials)[: self._settings.keep_top_k]:
            if WEIGHTS_ATTR in t.system_attrs:
                keep.add(t.system_attrs[WEIGHTS_ATTR])
        for t in trials:
            if t.state in (TrialState.RUNNING, TrialState.WAITING):
                continue
            for key in t.system_attrs:
                artifact_id = key.removeprefix(ARTIFACT_PREFIX)
                if key.startswith(ARTIFACT_PREFIX) and artifact_id not in keep:
                    self._remove(artifact_id)


def _worker_attrs(request: TrialClaim) -> dict[str, Any]:
    attrs: dict[str, Any] = {"worker": request.worker_id}
    if request.device:
        attrs["device"] = request.device
    return attrs


def _has_artifacts(trial: FrozenTrial) -> bool:
    return any(key.startswith(ARTIFACT_PREFIX) for key in trial.system_attrs)


def _suggest_all(trial: optuna.trial.Trial, distributions: dict[str, BaseDistribution]) -> None:
    for name, dist in distributions.items():
        if isinstance(dist, FloatDistribution):
            trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
        elif isinstance(dist, IntDistribution):
            trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
        else:
            trial.suggest_categorical(name, dist.choices)  # type: ignore[attr-defined]

"""Messages from the worker holding a trial's lease: heartbeat, report, complete, fail.

Every message is idempotent (the same report or completion twice gets the same answer), so
workers can retry any of them after a network error or a server restart.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

import optuna
from optuna.trial import TrialState

from service import keys, sample_ahead
from service import optuna_internals as internals
from service.artifacts import Artifacts, has_artifacts
from service.errors import Conflict, InvalidInput, NotFound
from service.leases import Leases, check_holder, lease_ended, paused_lease, running_trial
from service.metrics import Metrics
from service.pausing import Pausing, asha_spec
from service.pruning import CompletedTrialsStudy, reads_completed_only
from service.registry import StudyHandle, StudyRegistry
from service.schemas import ReportAnswer, TrialAck
from service.storage import Backend, TrialFacts
from service.trial_cache import uses_view

logger = logging.getLogger(__name__)

CANCELLED = "handed back: the study was stopped with cancel_running"


class TrialMessages:
    def __init__(
        self,
        backend: Backend,
        registry: StudyRegistry,
        leases: Leases,
        artifacts: Artifacts,
        metrics: Metrics,
        pausing: Pausing,
    ) -> None:
        self._backend = backend
        self._registry = registry
        self._leases = leases
        self._artifacts = artifacts
        self._metrics = metrics
        self._pausing = pausing

    def heartbeat(self, trial_id: int, worker_id: str | None = None) -> None:
        handle, facts = self._registry.facts(trial_id)
        check_holder(handle, facts.number, facts.worker, worker_id)
        _check_running(handle, facts)
        self._backend.record_heartbeat(trial_id)
        if facts.worker:
            self._backend.touch_worker(
                facts.worker, study=handle.name, trial_number=facts.number, trial_id=trial_id
            )

    def report(
        self,
        trial_id: int,
        epoch: int,
        val_loss: float,
        val_accuracy: float | None,
        train_loss: float | None = None,
        worker_id: str | None = None,
    ) -> ReportAnswer:
        handle, facts = self._registry.facts(trial_id)
        check_holder(handle, facts.number, facts.worker, worker_id)
        values = facts.intermediate_values  # our own copy
        if facts.state == TrialState.PRUNED and epoch in values:
            return ReportAnswer(prune=True)  # the same report again, after it pruned the trial
        if facts.paused_epoch == epoch:
            return ReportAnswer(prune=False, pause=True)  # the same report again, after it paused
        _check_running(handle, facts)
        self._leases.renew(trial_id)
        if epoch not in values:  # else a retried report: answer it again
            expected = max(values, default=-1) + 1
            if epoch != expected:
                raise InvalidInput(
                    f"epochs must be reported in order: expected epoch {expected}", field="epoch"
                )
            value = objective_value(handle, val_loss, val_accuracy)
            attrs: dict[str, float] = {keys.VAL_LOSS: val_loss}
            if val_accuracy is not None:
                attrs[keys.VAL_ACCURACY] = val_accuracy
            if train_loss is not None:
                attrs[keys.train_loss_key(epoch)] = train_loss
            # the curve the pruner reads is the objective's metric
            self._backend.record_report(trial_id, attrs, epoch, value)
            values[epoch] = value
        self._metrics.reports.labels(handle.name).inc()
        # A trial that has trained its last epoch is not pruned: its result is complete.
        last_epoch = epoch >= handle.spec.training.epochs - 1
        if asha_spec(handle) is not None:
            decision = (
                "continue"
                if last_epoch
                else self._pausing.decide(handle, trial_id, epoch, values[epoch])
            )
            prune = decision == "stop"
            if decision == "pause":
                return ReportAnswer(prune=False, pause=True)
        else:
            prune = not last_epoch and self._should_prune(handle, facts)
        if prune:
            if self._ends_with_core(handle):
                self._backend.prune_trial(trial_id, values[max(values)])
            else:
                self._finish(handle, facts.number, trial_id, TrialState.PRUNED)
            logger.info("trial %d of %s pruned after epoch %d", facts.number, handle.name, epoch)
            self._finished(handle, facts.worker, facts.has_artifacts)
        return ReportAnswer(prune=prune)

    def _ends_with_core(self, handle: StudyHandle) -> bool:
        """Whether a trial's end is written as Core statements (`Backend.complete_trial`,
        `prune_trial`): TPE does nothing after a trial, so tell's read of the whole trial and
        its call of the sampler can be skipped."""
        return uses_view(handle.study) and self._backend.writes_with_core

    def _should_prune(self, handle: StudyHandle, facts: TrialFacts) -> bool:
        """What Trial.should_prune asks, reading no more of the study than the pruner needs."""
        pruner = handle.study.pruner
        if reads_completed_only(pruner):
            completed = handle.completed.get(
                handle.study, self._backend, facts.completed_in_study, handle.trials
            )
            return pruner.prune(
                CompletedTrialsStudy(handle.study, completed),  # type: ignore[arg-type]
                facts.frozen(),
            )
        return pruner.prune(handle.study, self._backend.trial(facts.trial_id))

    def complete(
        self,
        trial_id: int,
        val_loss: float,
        val_accuracy: float | None,
        worker_id: str | None = None,
        epoch: int | None = None,
        test: Mapping[str, float] | None = None,
    ) -> TrialAck:
        """``val_loss``/``val_accuracy``: the trial's result, of ``epoch`` (the objective's
        epoch, the last when not given); the objective's metric of them is the trial's value.
        ``test``: test_loss/test_accuracy of the kept weights, stored as attrs and nothing
        else (selection never reads them)."""
        handle, facts = self._registry.facts(trial_id)
        check_holder(handle, facts.number, facts.worker, worker_id)
        if facts.state == TrialState.COMPLETE:
            return TrialAck(trial_id=trial_id, state="complete")  # a retried completion
        _check_running(handle, facts)
        value = objective_value(handle, val_loss, val_accuracy)
        if (
            epoch is not None
            and facts.intermediate_values
            and epoch not in facts.intermediate_values
        ):
            raise InvalidInput(f"epoch {epoch} was never reported", field="epoch")
        attrs: dict[str, float] = {keys.VAL_LOSS: val_loss}
        if val_accuracy is not None:
            attrs[keys.VAL_ACCURACY] = val_accuracy
        if epoch is not None:
            attrs[keys.OBJECTIVE_EPOCH] = epoch
        for name, key in (("test_loss", keys.TEST_LOSS), ("test_accuracy", keys.TEST_ACCURACY)):
            if test and test.get(name) is not None:
                attrs[key] = test[name]
        if self._ends_with_core(handle):
            ended = self._backend.complete_trial(trial_id, value, attrs)
        else:
            # If it finished meanwhile, _finish says how.
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                self._backend.set_user_attrs(trial_id, attrs)
            ended = self._finish(handle, facts.number, trial_id, TrialState.COMPLETE, value)
        if ended != TrialState.COMPLETE:  # the lease sweep failed it, or a report pruned it
            raise lease_ended(handle, facts.number, ended)
        logger.info("trial %d of %s complete: val_loss %.4g", facts.number, handle.name, val_loss)
        self._finished(handle, facts.worker, facts.has_artifacts)
        return TrialAck(trial_id=trial_id, state="complete")

    def pause(self, trial_id: int, epoch: int, worker_id: str | None = None) -> TrialAck:
        """The worker paused the trial after `epoch`, as its report's answer asked, with the
        checkpoint of that epoch uploaded: the worker is free, the trial waits for a promotion."""
        handle, facts = self._registry.facts(trial_id)
        check_holder(handle, facts.number, facts.worker, worker_id)
        if facts.paused_epoch == epoch:
            return TrialAck(trial_id=trial_id, state="paused")  # the same message again
        _check_running(handle, facts)
        self._pausing.pause(handle, facts, epoch)
        if facts.worker:
            self._backend.touch_worker(facts.worker, study=None, trial_number=None, trial_id=None)
        return TrialAck(trial_id=trial_id, state="paused")

    def fail(
        self, trial_id: int, reason: str, retry: bool, worker_id: str | None = None
    ) -> TrialAck:
        handle, trial = running_trial(self._registry, trial_id, worker_id)
        # Under the claim lock: between the FAIL and the re-queued copy, a claim would count
        # one trial fewer in flight and sample one too many.
        with self._backend.claim_lock.hold(handle.study_id):
            handle, trial = running_trial(self._registry, trial_id, worker_id)
            self._backend.set_user_attrs(trial_id, {keys.FAIL_REASON: reason})
            # The sweep takes the same lock: FAIL can only be ours.
            ended = self._finish(handle, trial.number, trial_id, TrialState.FAIL)
            if ended != TrialState.FAIL:  # completed or pruned meanwhile
                raise lease_ended(handle, trial.number, ended)
            logger.info(
                "trial %d of %s failed%s: %s",
                trial.number,
                handle.name,
                " (handed back)" if retry else "",
                reason,
            )
            if retry:
                self._leases.requeue(handle.study, self._backend.trial(trial_id))
        self._finished(handle, trial.user_attrs.get(keys.WORKER), has_artifacts(trial))
        return TrialAck(trial_id=trial_id, state="fail")

    def hand_back_running(self, name: str) -> int:
        """Hand back every running trial of the study `name` (re-queued with the same params,
        to resume from its last checkpoint): their workers' next message gets 409 and they go
        on to other studies. Returns how many were handed back."""
        handle = self._registry.get(name)
        handed_back = 0
        for trial in handle.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            try:
                self.fail(internals.trial_id(trial), CANCELLED, retry=True)
            except (Conflict, NotFound):  # it ended meanwhile
                continue
            handed_back += 1
        return handed_back

    def _finish(
        self,
        handle: StudyHandle,
        number: int,
        trial_id: int,
        state: TrialState,
        value: float | None = None,
    ) -> TrialState:
        """Tell Optuna how the trial ended; returns the state it is in afterwards. Another
        request or server process may have finished it first (the same message sent twice at
        once, the lease sweep): then the state is the one they gave it."""
        try:
            return handle.study.tell(number, value, state=state, skip_if_finished=True).state
        except optuna.exceptions.UpdateFinishedTrialError:  # finished between check and write
            return self._backend.trial(trial_id).state

    def _finished(self, handle: StudyHandle, worker: str | None, had_artifacts: bool) -> None:
        sample_ahead.after_finish(self._backend, handle)  # the next claim's configuration
        if worker:
            self._backend.touch_worker(worker, study=None, trial_number=None, trial_id=None)
        # A finished trial's checkpoint goes now. Weights that drop out of the top k because a
        # trial without any got better wait for the lease keeper's sweep, which collects too:
        # collecting walks every trial, too much for each message.
        if had_artifacts:
            self._artifacts.collect_now(handle)


def _check_running(handle: StudyHandle, facts: TrialFacts) -> None:
    """Raises Conflict unless a worker holds the trial: it is running and not paused."""
    if facts.state != TrialState.RUNNING:
        raise lease_ended(handle, facts.number, facts.state)
    if facts.paused_epoch is not None:
        raise paused_lease(handle, facts.number, facts.paused_epoch)


def objective_value(handle: StudyHandle, val_loss: float, val_accuracy: float | None) -> float:
    """The study's objective metric of one result. Raises InvalidInput when it is missing."""
    if handle.spec.objective.metric == "val_loss":
        return val_loss
    if val_accuracy is None:
        raise InvalidInput("this study's objective is val_accuracy: send it", field="val_accuracy")
    return val_accuracy

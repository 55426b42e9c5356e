"""Pause and promote: the asha pruner's decisions (service/asha.py) applied to a study's trials.

- A report that ends a rung gets ASHA's decision: continue, stop (the trial is pruned) or, in
  promotion mode, pause. A trial told to pause uploads its checkpoint of that epoch and says so
  (`pause`): from then on it holds no worker, and its lease is the server's (the lease sweep
  keeps it fresh).
- A claim promotes before it samples: the best paused trial of the highest rung that now ranks
  in its rung's top 1/reduction_factor goes out again, the same trial with the same params, to
  resume from its checkpoint (`promote`, under the study's claim lock).
- When no configuration is left to sample and no trial runs, no rung can grow: each rung's best
  paused trial is promoted even where fewer than reduction_factor trials reached it, so the best
  candidates train to the end (with a budget of configurations rather than ASHA's budget of
  time, the top rungs would otherwise never promote anyone). When none is left to promote, the
  paused trials end as PRUNED with their last value (`end_paused`).
- The baseline trial never pauses or stops: it trains to its last epoch.

At most one checkpoint per trial is kept (an upload replaces the previous one), and a paused
trial's stays until it ends: a study's checkpoints are at most one per paused or running trial.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Container

import optuna
from optuna.trial import FrozenTrial, TrialState

from service import asha, keys
from service.artifacts import Artifacts
from service.asha import Decision
from service.errors import Conflict
from service.optimizers import AshaSpec
from service.registry import StudyHandle
from service.schemas import Resume
from service.storage import Backend, TrialFacts
from service.study_view import StudyView
from service.views import is_paused

logger = logging.getLogger(__name__)


def asha_spec(handle: StudyHandle) -> AshaSpec | None:
    pruner = handle.spec.pruner
    return pruner if isinstance(pruner, AshaSpec) else None


def _rungs(handle: StudyHandle, spec: AshaSpec) -> tuple[int, ...]:
    return asha.rung_epochs(spec.min_resource, spec.reduction_factor, handle.spec.training.epochs)


def _minimize(handle: StudyHandle) -> bool:
    return handle.spec.objective.direction == "minimize"


class PausedAsPruned(StudyView):
    """The study as a sampler sees it under asha's promotion mode: a paused trial (RUNNING to
    Optuna, held by no worker) shows as PRUNED with its learning curve. That is what it is to
    the search, a configuration stopped at a rung with its value there, and TPE ranks pruned
    trials by the rung they reached and their value; as RUNNING, constant liar would count every
    paused trial (most of the study) among the worst, and TPE would learn from the few that
    completed only. Everything else is the study's own."""

    def __init__(
        self, study: optuna.Study, paused: Callable[[FrozenTrial], bool] = is_paused
    ) -> None:
        super().__init__(study)
        self._paused = paused  # the replay benchmark knows its paused trials by number

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        wanted = None if states is None else set(states)
        read = None if wanted is None else tuple(wanted | {TrialState.RUNNING})
        out = []
        for trial in self._study._get_trials(deepcopy=False, states=read, use_cache=use_cache):
            if trial.state == TrialState.RUNNING and self._paused(trial):
                trial = copy.copy(trial)  # a shallow copy: Optuna's own is shared
                trial.state = TrialState.PRUNED
            if wanted is None or trial.state in wanted:
                out.append(trial)
        return copy.deepcopy(out) if deepcopy else out


class Pausing:
    def __init__(self, backend: Backend, artifacts: Artifacts) -> None:
        self._backend = backend
        self._artifacts = artifacts

    def decide(self, handle: StudyHandle, trial_id: int, epoch: int, value: float) -> Decision:
        """ASHA's decision for a report of `epoch` (already recorded) with `value`. The baseline
        trains to its last epoch (the comparison needs its whole run), ranked like the others."""
        spec = asha_spec(handle)
        assert spec is not None, "only asha studies are decided here"
        rung = asha.rung_of_epoch(_rungs(handle, spec), epoch)
        if rung is None or self._backend.trial(trial_id).user_attrs.get(keys.BASELINE):
            return "continue"
        values = self._backend.rung_values(handle.study_id, epoch)
        return asha.decide(value, values, spec.reduction_factor, _minimize(handle), spec.mode)

    def pause(self, handle: StudyHandle, facts: TrialFacts, epoch: int) -> None:
        """Record that the trial paused after `epoch`, a rung's last epoch that it reported and
        whose checkpoint it uploaded. Raises Conflict otherwise."""
        spec = asha_spec(handle)
        where = f"trial {facts.number} of {handle.name}"
        if spec is None or spec.mode != "promotion":
            raise Conflict(f"{where}: its study does not pause trials (pruner asha, promotion)")
        rung = asha.rung_of_epoch(_rungs(handle, spec), epoch)
        if rung is None or max(facts.intermediate_values, default=None) != epoch:
            raise Conflict(f"{where} can pause only after reporting a rung's epoch, not {epoch}")
        checkpoint = self._backend.trial(facts.trial_id).system_attrs.get(keys.CHECKPOINT)
        if not checkpoint or int(checkpoint["epoch"]) != epoch:
            raise Conflict(f"{where}: upload its checkpoint of epoch {epoch} before pausing")
        with self._backend.claim_lock.hold(handle.study_id):
            # The attr first: a reader that sees the row sees the attr.
            self._backend.set_user_attrs(facts.trial_id, {keys.PAUSED_AFTER_EPOCH: epoch})
            self._backend.pause(
                facts.trial_id, handle.study_id, epoch, rung, facts.intermediate_values[epoch]
            )
        logger.info("trial %d of %s paused after epoch %d", facts.number, handle.name, epoch)

    def promote(self, handle: StudyHandle, draining: bool) -> tuple[int, Resume] | None:
        """Under the study's claim lock: the paused trial to resume now (taken out of the
        paused ones), with where it resumes from; None when none ranks high enough.
        `draining`: nothing runs and no new configuration will come (asha.promotion)."""
        spec = asha_spec(handle)
        paused = self._backend.paused(handle.study_id)
        if spec is None or not paused:
            return None
        rungs = _rungs(handle, spec)
        values = {
            rung: self._backend.rung_values(handle.study_id, rungs[rung] - 1)
            for rung in {p.rung for p in paused}
            if rung < len(rungs)  # rungs move when training.epochs changes: a stale one waits
        }
        chosen = asha.promotion(
            (p for p in paused if p.rung in values),
            values,
            spec.reduction_factor,
            _minimize(handle),
            draining,
        )
        if chosen is None or not self._backend.unpause(chosen.trial_id):
            return None
        trial = self._backend.trial(chosen.trial_id)
        self._backend.set_user_attrs(
            chosen.trial_id,
            {
                keys.PAUSED_AFTER_EPOCH: None,
                keys.PROMOTIONS: int(trial.user_attrs.get(keys.PROMOTIONS) or 0) + 1,
            },
        )
        epoch = int(trial.system_attrs[keys.CHECKPOINT]["epoch"])
        logger.info(
            "trial %d of %s promoted from rung %d (after epoch %d)",
            trial.number,
            handle.name,
            chosen.rung,
            epoch,
        )
        url = f"/api/v1/trials/{chosen.trial_id}/checkpoint"
        return chosen.trial_id, Resume(epoch=epoch, checkpoint_url=url)

    def end_paused(self, handle: StudyHandle) -> None:
        """Under the study's claim lock, once nothing can promote them: end the paused trials as
        PRUNED with their last value."""
        ended = 0
        for paused in self._backend.paused(handle.study_id):
            trial = self._backend.trial(paused.trial_id)
            # Finished meanwhile by another process: its state stands.
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                handle.study.tell(trial.number, state=TrialState.PRUNED, skip_if_finished=True)
            self._backend.unpause(paused.trial_id)
            ended += 1
        if ended:
            logger.info("%s: %d paused trials ended as pruned", handle.name, ended)
            self._artifacts.collect_now(handle)  # their checkpoints

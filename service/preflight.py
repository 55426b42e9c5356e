"""The study preflight: before a study's first trial trains anywhere, one worker checks the data
set, the model and one training step, and says how it went.

The state is two study system attrs (`keys.PREFLIGHT`, `keys.ERROR`). Under the study's claim
lock a claim from a worker that runs preflights (`TrialClaim.preflight`) gets, while the
preflight is pending, the one flagged trial: a new one only when none is running (a lost lease
or a hand-back frees it). The worker's result then:
- passed: the data found is kept, trials go out as usual, the flagged one trains;
- a spec fault: the study is in error (no trial is handed out; `resume` clears it and the
  preflight runs again), the flagged trial fails without a retry;
- a worker fault: the trial is handed back (re-queued) and the worker skips the study.
"""

from __future__ import annotations

import logging
from typing import Literal

from optuna.trial import TrialState

from service import keys
from service.errors import Conflict, NotFound
from service.leases import running_trial
from service.messages import TrialMessages
from service.preflight_state import PENDING, Preflight
from service.registry import StudyHandle, StudyRegistry
from service.schemas import PreflightAnswer, PreflightResult
from service.storage import Backend

logger = logging.getLogger(__name__)


class Preflights:
    def __init__(self, backend: Backend, registry: StudyRegistry, messages: TrialMessages) -> None:
        self._backend = backend
        self._registry = registry
        self._messages = messages

    # --- under the claim lock, from Claims -----------------------------------------------------
    def gate(
        self, handle: StudyHandle, runs_preflights: bool
    ) -> Literal["none", "wait", "flag", "any"]:
        """Which trial a claim may get now: none (the study is in error), none yet (wait: its
        preflight runs elsewhere), the flagged preflight trial, or any."""
        state = Preflight.of(self._backend.study_system_attrs(handle.study_id))
        if state.error is not None:
            return "none"
        if state.state == "passed" or not runs_preflights:
            return "any"
        return "wait" if self._in_flight(state.trial_id) else "flag"

    def _in_flight(self, trial_id: int | None) -> bool:
        if trial_id is None:
            return False
        try:
            return self._backend.trial(trial_id).state == TrialState.RUNNING
        except NotFound:
            return False

    def flagged(self, handle: StudyHandle, trial_id: int) -> None:
        self._backend.set_study_system_attrs(
            handle.study_id, {keys.PREFLIGHT: {**PENDING, "trial_id": trial_id}}
        )

    # --- the worker's result -------------------------------------------------------------------
    def record(
        self, trial_id: int, result: PreflightResult, worker_id: str | None
    ) -> PreflightAnswer:
        handle, trial = running_trial(self._registry, trial_id, worker_id)  # 409 once it ended
        holder = trial.user_attrs.get(keys.WORKER) or worker_id
        with self._backend.claim_lock.hold(handle.study_id):
            state = Preflight.of(self._backend.study_system_attrs(handle.study_id))
            if state.trial_id != trial_id:
                raise Conflict(f"trial {trial.number} of {handle.name} is not its preflight")
            if result.ok:
                assert result.data is not None
                if state.state != "passed":
                    self._backend.set_study_system_attrs(
                        handle.study_id,
                        {
                            keys.PREFLIGHT: {
                                "state": "passed",
                                "trial_id": trial_id,
                                "data": result.data.model_dump(mode="json"),
                            }
                        },
                    )
                    logger.info(
                        "study %s passed its preflight: %d classes, %d train images",
                        handle.name,
                        len(result.data.classes),
                        result.data.train_images,
                    )
                return PreflightAnswer(study=handle.name, outcome="passed")
            if result.fault == "spec":
                self._backend.set_study_system_attrs(
                    handle.study_id, {keys.ERROR: result.error, keys.PREFLIGHT: PENDING}
                )
        error = result.error or ""
        if result.fault == "spec":
            logger.warning("study %s failed its preflight: %s", handle.name, error)
            self._messages.fail(trial_id, f"preflight: {error}", retry=False)
            return PreflightAnswer(study=handle.name, outcome="error")
        logger.warning("worker %s skips study %s: %s", holder, handle.name, error)
        if holder:
            self._backend.skip_study(holder, handle.name, error)
        self._messages.fail(trial_id, f"preflight on worker {holder}: {error}", retry=True)
        return PreflightAnswer(study=handle.name, outcome="skipped")

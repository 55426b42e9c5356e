"""The worker loop: claim a trial, read it into a typed :class:`~worker.trial.Trial`, fine-tune
it, report every epoch, obey pruning, complete or fail it with a reason, claim the next. One
loop per device slot."""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.client import LeaseLost, NotYet, ServerClient, TrialGone
from worker.engine import (
    Caches,
    EpochReport,
    Interrupted,
    NonFiniteLoss,
    TrialOutcome,
    evaluate_on_test,
    fine_tune,
)
from worker.heartbeat import Heartbeat
from worker.models import WeightsUnavailable
from worker.preflight import PreflightFault, run_preflight
from worker.trial import BadClaim, Hyperparameters, Trial, Verdict

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    server: str
    token: str | None
    worker_id: str
    host: str
    device: str
    study: str | None = None
    max_trials: int | None = None
    exit_when_idle: bool = False
    idle_backoff_max_s: float = 30.0
    upload_weights: bool = True
    labels: dict[str, str] = field(default_factory=dict)  # a study may require some (--label)


class WorkerStopped(Exception):
    """This machine cannot run the study's trials (e.g. pretrained weights missing)."""


class Runner:
    def __init__(
        self,
        config: WorkerConfig,
        caches: Caches,
        stop: threading.Event,
        client: ServerClient | None = None,
    ) -> None:
        self.config = config
        self.caches = caches
        self.stop = stop
        self.client = client or ServerClient(
            config.server, config.token, worker_id=config.worker_id
        )
        self.trials_run = 0
        # Studies this worker's preflight found its machine lacking for, and why.
        self.skipped: dict[str, str] = {}

    def run(self) -> int:
        """Run trials until stopped, out of trials (--exit-when-idle) or --max-trials."""
        idle = 1.0
        limit = self.config.max_trials
        while not self.stop.is_set() and (limit is None or self.trials_run < limit):
            claim = self.client.claim(
                self.config.worker_id,
                self.config.study,
                self.config.device,
                self.config.host,
                self.config.labels,
                sorted(self.skipped),
            )
            if isinstance(claim, NotYet):  # not idle: a study's preflight runs elsewhere
                self.stop.wait(claim.retry_after_s)
                continue
            if claim is None:
                if self.config.exit_when_idle:
                    logger.info("nothing to run; exiting (--exit-when-idle)")
                    break
                self.stop.wait(idle)
                idle = min(idle * 2, self.config.idle_backoff_max_s)
                continue
            idle = 1.0
            self.run_trial(claim)
            self.trials_run += 1
        return 0

    def run_trial(self, claim: Mapping[str, Any]) -> str:
        """Run one claimed trial (the claim answer's JSON) to its end; returns how it ended."""
        trial = self._read(claim)
        logger.info("%s: %s", trial.label, _describe(trial.job.hparams))
        with Heartbeat(self.client, trial.trial_id, trial.heartbeat_interval) as heartbeat:
            if trial.preflight:
                ended = self._preflight(trial, heartbeat)
                if ended is not None:
                    return ended
            try:
                outcome = self._train(trial, heartbeat)
            except Exception as exc:  # each kind of early end is told apart in _ended_early
                return self._ended_early(trial, exc, heartbeat)
            if outcome.status == "pruned":
                heartbeat.finish()
                logger.info("%s pruned after %d epochs", trial.label, outcome.epochs_run)
                return "pruned"
            if outcome.status == "paused":
                return self._pause(trial, outcome, heartbeat)
            return self._complete(trial, outcome, heartbeat)

    def _preflight(self, trial: Trial, heartbeat: Heartbeat) -> str | None:
        """Check the study before its first trial trains and tell the server. Returns None when
        the trial should train, else how it ended (the server failed or re-queued it)."""
        logger.info("%s: checking the study first (preflight)", trial.label)
        try:
            result: dict[str, Any] = {
                "ok": True,
                "data": run_preflight(trial.job, self.caches, self.config.device),
            }
        except PreflightFault as fault:
            result = {"ok": False, "fault": fault.fault, "error": fault.error[:4000]}
        try:
            outcome = self.client.preflight(trial.trial_id, result)
        except LeaseLost as exc:
            return _abandoned(trial.label, exc)
        if outcome == "passed":
            return None
        heartbeat.finish()
        if outcome == "error":
            logger.error(
                "study %s cannot be trained; it is in error until it is resumed: %s",
                trial.study,
                result["error"],
            )
            return "preflight failed"
        self.skipped[trial.study] = result["error"]
        logger.warning(
            "skipping study %s on this worker (handed back): %s", trial.study, result["error"]
        )
        if self.config.study == trial.study:  # the one study this worker serves
            raise WorkerStopped(f"study {trial.study}: {result['error']}")
        return "skipped"

    def _read(self, claim: Mapping[str, Any]) -> Trial:
        """The typed trial of a claim answer. One this worker cannot read is handed back (a
        newer worker may run it) and the worker stops, as for missing weights."""
        try:
            return Trial.from_claim(claim)
        except BadClaim as exc:
            if exc.trial_id is not None:
                self.client.fail(
                    exc.trial_id, f"on worker {self.config.worker_id}: {exc}", retry=True
                )
            raise WorkerStopped(str(exc)) from exc

    def _train(self, trial: Trial, heartbeat: Heartbeat) -> TrialOutcome:
        """Fine-tune the trial (from its checkpoint when it resumes), reporting every epoch."""
        client, trial_id = self.client, trial.trial_id
        state = client.download(trial.resume.checkpoint_url) if trial.resume else None
        return fine_tune(
            trial.job,
            self.caches,
            self._reporter(trial_id),
            device=self.config.device,
            on_checkpoint=lambda epoch, data: client.upload_checkpoint(trial_id, epoch, data),
            resume=state,
            should_stop=lambda: self.stop.is_set() or heartbeat.lost.is_set(),
            progress=sys.stderr.isatty(),
        )

    def _ended_early(self, trial: Trial, exc: Exception, heartbeat: Heartbeat) -> str:
        """What an exception during training means for the trial: handed back, abandoned (its
        lease is gone) or failed with the reason; missing weights stop the worker."""
        label, trial_id, client = trial.label, trial.trial_id, self.client
        if isinstance(exc, Interrupted):
            if heartbeat.lost.is_set():
                return _abandoned(label, heartbeat.why)
            client.fail(trial_id, "the worker was stopped; handed back", retry=True)
            logger.info("%s: handed back", label)
            return "handed back"
        if isinstance(exc, LeaseLost):  # a report or checkpoint upload was refused
            return _abandoned(label, exc)
        if isinstance(exc, NonFiniteLoss):
            client.fail(trial_id, str(exc))
            logger.warning("%s failed: %s", label, exc)
            return "failed"
        if isinstance(exc, WeightsUnavailable):
            client.fail(trial_id, f"on worker {self.config.worker_id}: {exc}", retry=True)
            raise WorkerStopped(str(exc)) from exc
        # a bad data root, CUDA OOM...: fail this trial, go on
        logger.error("%s failed", label, exc_info=exc)
        client.fail(trial_id, f"{type(exc).__name__}: {exc}")
        return "failed"

    def _complete(self, trial: Trial, outcome: TrialOutcome, heartbeat: Heartbeat) -> str:
        """Evaluate the kept weights on the test folder (if any), upload them (unless told not
        to) and complete the trial."""
        test = self._test(trial, outcome)
        try:
            if self.config.upload_weights:
                self.client.upload_weights(trial.trial_id, outcome.weights_bytes())
            heartbeat.finish()
            self.client.complete(
                trial.trial_id, outcome.val_loss, outcome.val_accuracy, outcome.epoch, test
            )
        except LeaseLost as exc:
            return _abandoned(trial.label, exc, finished=True)
        logger.info(
            "%s complete: val_loss %.4f, val_accuracy %.3f",
            trial.label,
            outcome.val_loss,
            outcome.val_accuracy,
        )
        return "completed"

    def _pause(self, trial: Trial, outcome: TrialOutcome, heartbeat: Heartbeat) -> str:
        """The checkpoint of the rung's epoch is uploaded: tell the server, which may promote
        the trial later (to any worker)."""
        assert outcome.epoch is not None
        heartbeat.finish()
        try:
            self.client.pause(trial.trial_id, outcome.epoch)
        except LeaseLost as exc:
            return _abandoned(trial.label, exc)
        logger.info("%s paused after epoch %d", trial.label, outcome.epoch)
        return "paused"

    def _test(self, trial: Trial, outcome: TrialOutcome) -> tuple[float, float] | None:
        """The test metrics of a completed trial; None without a test folder. They are only
        shown, never selected on: a failure to compute them is logged, not a failed trial."""
        try:
            test = evaluate_on_test(trial.job, self.caches, outcome, self.config.device)
        except Exception:  # noqa: BLE001 - the trial's result stands without them
            logger.warning("%s: no test metrics", trial.label, exc_info=True)
            return None
        if test is not None:
            logger.info("%s: test_loss %.4f, test_accuracy %.3f", trial.label, *test)
        return test

    def _reporter(self, trial_id: int) -> Callable[[EpochReport], Verdict]:
        def on_epoch(report: EpochReport) -> Verdict:
            return self.client.report(
                trial_id, report.epoch, report.val_loss, report.val_accuracy, report.train_loss
            )

        return on_epoch


def _abandoned(label: str, why: LeaseLost | None, finished: bool = False) -> str:
    """One log line for a trial the server took back; the worker goes on to the next claim."""
    if isinstance(why, TrialGone):
        logger.warning(
            "%s: stopped, the server no longer has it (its study was deleted?): %s; "
            "its checkpoint and weights are dropped",
            label,
            why.detail,
        )
        return "trial gone"
    detail = why.detail if why is not None else "its lease ended"
    logger.warning("%s: %s: %s", label, "finished too late" if finished else "abandoned", detail)
    return "lease lost"


def _describe(hparams: Hyperparameters) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in dataclasses.asdict(hparams).items()
    )

"""The worker loop: claim a trial, fine-tune it, report every epoch, obey pruning, complete or
fail it with a reason, claim the next. One loop per device slot."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker.client import LeaseLost, ServerClient
from worker.engine import Caches, EpochReport, Interrupted, NonFiniteLoss, TrialJob, fine_tune
from worker.heartbeat import Heartbeat
from worker.models import WeightsUnavailable

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


def job_from_claim(claim: dict[str, Any], device: str) -> TrialJob:
    spec, hparams = claim["spec"], claim["config"]
    return TrialJob(
        model=spec["model"],
        data={**spec["data"], "batch_size": hparams["batch_size"]},
        training=spec["training"],
        hparams=hparams,
        seed=claim["seed"],
        device=device,
    )


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
        self.client = client or ServerClient(config.server, config.token)
        self.trials_run = 0

    def run(self) -> int:
        """Run trials until stopped, out of trials (--exit-when-idle) or --max-trials."""
        idle = 1.0
        limit = self.config.max_trials
        while not self.stop.is_set() and (limit is None or self.trials_run < limit):
            claim = self.client.claim(
                self.config.worker_id, self.config.study, self.config.device, self.config.host,
                self.config.labels,
            )
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

    def run_trial(self, claim: dict[str, Any]) -> str:
        """Run one claimed trial to its end; returns how it ended."""
        trial_id, number, study = claim["trial_id"], claim["number"], claim["study"]
        label = f"trial {number} of {study}"
        logger.info("%s: %s", label, _describe(claim["config"]))
        client = self.client
        with Heartbeat(client, trial_id, claim["heartbeat_interval"]) as heartbeat:
            try:
                resume = claim.get("resume")
                state = client.download(resume["checkpoint_url"]) if resume else None
                outcome = fine_tune(
                    job_from_claim(claim, self.config.device),
                    self.caches,
                    self._reporter(trial_id),
                    on_checkpoint=lambda epoch, data: client.upload_checkpoint(
                        trial_id, epoch, data
                    ),
                    resume=state,
                    should_stop=lambda: self.stop.is_set() or heartbeat.lost.is_set(),
                    progress=sys.stderr.isatty(),
                )
            except Interrupted:
                if heartbeat.lost.is_set():
                    logger.warning("%s: abandoned, its lease ended", label)
                    return "lease lost"
                client.fail(trial_id, "the worker was stopped; handed back", retry=True)
                logger.info("%s: handed back", label)
                return "handed back"
            except LeaseLost as exc:
                logger.warning("%s: abandoned: %s", label, exc.detail)
                return "lease lost"
            except NonFiniteLoss as exc:
                client.fail(trial_id, str(exc))
                logger.warning("%s failed: %s", label, exc)
                return "failed"
            except WeightsUnavailable as exc:
                client.fail(trial_id, f"on worker {self.config.worker_id}: {exc}", retry=True)
                raise WorkerStopped(str(exc)) from exc
            except Exception as exc:  # a bad data root, CUDA OOM...: fail this trial, go on
                logger.exception("%s failed", label)
                client.fail(trial_id, f"{type(exc).__name__}: {exc}")
                return "failed"
            if outcome.status == "pruned":
                heartbeat.finish()
                logger.info("%s pruned after %d epochs", label, outcome.epochs_run)
                return "pruned"
            try:
                if self.config.upload_weights:
                    client.upload_weights(trial_id, outcome.weights_bytes())
                heartbeat.finish()
                client.complete(trial_id, outcome.val_loss, outcome.val_accuracy)
            except LeaseLost as exc:
                logger.warning("%s: finished too late: %s", label, exc.detail)
                return "lease lost"
        logger.info(
            "%s complete: val_loss %.4f, val_accuracy %.3f",
            label,
            outcome.val_loss,
            outcome.val_accuracy,
        )
        return "completed"

    def _reporter(self, trial_id: int) -> Callable[[EpochReport], bool]:
        def on_epoch(report: EpochReport) -> bool:
            return self.client.report(
                trial_id, report.epoch, report.val_loss, report.val_accuracy, report.train_loss
            )

        return on_epoch


def _describe(config: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items()
    )

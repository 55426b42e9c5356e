"""Checkpoints and final weights: uploads from the worker holding a trial's lease, downloads,
and the garbage collection that keeps only what a trial may resume from and the top-k weights."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

from optuna.trial import FrozenTrial

from service import keys
from service.errors import InvalidInput, NotFound
from service.leases import running_trial
from service.registry import StudyHandle, StudyRegistry
from service.storage import Backend
from service.views import ranked

logger = logging.getLogger(__name__)


def has_artifacts(trial: FrozenTrial) -> bool:
    return any(key.startswith(keys.ARTIFACT_PREFIX) for key in trial.system_attrs)


class Artifacts:
    # Artifact ids this process removed: the sweep sees them until their trial's attrs go.
    _REMEMBERED = 100_000

    def __init__(self, backend: Backend, registry: StudyRegistry, keep_top_k: int) -> None:
        self._backend = backend
        self._registry = registry
        self._keep_top_k = keep_top_k
        self._removed: OrderedDict[str, None] = OrderedDict()

    def save_checkpoint(
        self, trial_id: int, epoch: int, upload: Path, worker_id: str | None = None
    ) -> None:
        """`upload`: the file the request body was spooled to; it is moved into the store."""
        _handle, trial = running_trial(self._registry, trial_id, worker_id)
        if epoch not in trial.intermediate_values:
            raise InvalidInput(f"epoch {epoch} has not been reported yet", field="epoch")
        artifact_id = self._backend.upload_artifact(
            trial, upload, f"checkpoint-{trial.number}-epoch{epoch}.pt"
        )
        previous = trial.system_attrs.get(keys.CHECKPOINT)
        self._backend.set_system_attr(
            trial_id, keys.CHECKPOINT, {"artifact_id": artifact_id, "epoch": epoch}
        )
        self._backend.record_heartbeat(trial_id)
        if previous:
            self._remove(previous["artifact_id"])

    def save_weights(self, trial_id: int, upload: Path, worker_id: str | None = None) -> None:
        _handle, trial = running_trial(self._registry, trial_id, worker_id)
        artifact_id = self._backend.upload_artifact(trial, upload, f"weights-{trial.number}.pt")
        self._backend.set_system_attr(trial_id, keys.WEIGHTS, artifact_id)

    def open_checkpoint(self, trial_id: int) -> BinaryIO:
        _handle, trial = self._registry.for_trial(trial_id)
        checkpoint = trial.system_attrs.get(keys.CHECKPOINT)
        if not checkpoint:
            raise NotFound(f"trial {trial.number} has no checkpoint")
        return self._backend.open_artifact(checkpoint["artifact_id"], "checkpoint")

    def open_weights(self, study: str, number: int) -> BinaryIO:
        handle = self._registry.get(study)
        trials = handle.study.get_trials(deepcopy=False)
        trial = next((t for t in trials if t.number == number), None)
        if trial is None:
            raise NotFound(f"study {study!r} has no trial {number}")
        artifact_id = trial.system_attrs.get(keys.WEIGHTS)
        top = {t.number for t in ranked(handle, trials)[: self._keep_top_k]}
        if artifact_id is None or number not in top:
            raise NotFound(
                f"trial {number} of {study!r} has no kept weights (only the top "
                f"{self._keep_top_k} complete trials keep theirs)"
            )
        return self._backend.open_artifact(artifact_id, "weights")

    def collect_garbage(self, handle: StudyHandle) -> None:
        """Keep the checkpoints a running or waiting trial may resume from and the weights of the
        top-k complete trials; remove every other artifact of the study. Light queries, not a
        read of the study's trials (that cost seconds once per study at 10,000 trials)."""
        refs = self._backend.artifact_refs(
            handle.study_id, self._keep_top_k, handle.spec.objective.direction == "maximize"
        )
        for artifact_id in refs.finished - refs.checkpoints - refs.top_weights:
            self._remove(artifact_id)

    def collect_now(self, handle: StudyHandle) -> None:
        """collect_garbage right after a trial ended. The trial has ended whatever happens here,
        and the lease sweep collects what this could not."""
        try:
            self.collect_garbage(handle)
        except Exception:  # noqa: BLE001 - any store fault: logged whole, the caller goes on
            logger.exception(
                "collecting the artifacts of %s failed; the lease sweep retries", handle.name
            )

    def remove_all(self, trials: list[FrozenTrial]) -> None:
        """Every artifact of these trials (a study being deleted)."""
        for t in trials:
            for key in t.system_attrs:
                if key.startswith(keys.ARTIFACT_PREFIX):
                    self._remove(key.removeprefix(keys.ARTIFACT_PREFIX))

    def _remove(self, artifact_id: str) -> None:
        if artifact_id in self._removed:
            return
        self._backend.remove_artifact(artifact_id)
        self._removed[artifact_id] = None
        if len(self._removed) > self._REMEMBERED:
            self._removed.popitem(last=False)

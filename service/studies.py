"""Study resources: create, list, summarise, rank, stop, resume and delete."""

from __future__ import annotations

import datetime as dt
import logging

from service import keys
from service.artifacts import Artifacts
from service.budget import Budget
from service.errors import NotFound
from service.grid import assigned_grid_ids, grid_left
from service.registry import StudyHandle, StudyRegistry
from service.schemas import BestList, StudyPublic, TrialPublic
from service.spec import StudySpec
from service.storage import Backend
from service.views import (
    baseline_trial,
    best_trial,
    improvement_pct,
    local_time,
    ranked,
    trial_public,
    utc_time,
)

logger = logging.getLogger(__name__)


class StudyService:
    def __init__(self, backend: Backend, registry: StudyRegistry, artifacts: Artifacts,
                 public_url: str | None, keep_top_k: int) -> None:
        self._backend = backend
        self._registry = registry
        self._artifacts = artifacts
        self._public_url = (public_url or "").rstrip("/")
        self._keep_top_k = keep_top_k

    def dashboard_url(self, handle: StudyHandle, base_url: str) -> str:
        base = self._public_url or base_url.rstrip("/")
        return f"{base}/dashboard/studies/{handle.study_id}"

    def create(self, spec: StudySpec, base_url: str) -> StudyPublic:
        handle = self._registry.create(spec)
        logger.info("created study %s (%d trials)", spec.name, spec.n_trials)
        return self.summary(spec.name, base_url, handle=handle)

    def list(self, base_url: str) -> list[StudyPublic]:
        out = []
        for name in self._registry.names():
            # A study deleted meanwhile by another process is skipped; anything else, the
            # database gone above all, is no shorter list.
            try:
                out.append(self.summary(name, base_url))
            except NotFound:
                logger.debug("skipping study %s", name, exc_info=True)
        return out

    def summary(self, name: str, base_url: str, handle: StudyHandle | None = None) -> StudyPublic:
        handle = handle or self._registry.get(name)
        trials = handle.study.get_trials(deepcopy=False)
        left = grid_left(handle.study.sampler, assigned_grid_ids(trials))
        budget = Budget.of(trials, handle.spec.n_trials, left)
        base = baseline_trial(trials)
        base_value = base.value if base else None
        ranking = ranked(handle, trials)
        best = best_trial(handle, ranking[0], base_value) if ranking else None
        reason = budget.reason()
        if budget.done() or budget.finished >= handle.spec.n_trials:
            state = "done"
        elif self._registry.is_stopped(handle):
            state, reason = "stopped", "stopped: no new trials are handed out"
        else:
            state = "running"
        created = handle.study.user_attrs.get(keys.CREATED_AT)
        return StudyPublic(
            name=handle.name,
            state=state,
            state_reason=reason,
            n_trials=handle.spec.n_trials,
            finished=budget.finished,
            counts=budget.counts,
            best=best,
            baseline=best_trial(handle, base, base_value) if base else None,
            improvement_over_baseline_pct=improvement_pct(
                best.value if best else None, base_value, handle.spec.objective.direction
            ),
            dashboard_url=self.dashboard_url(handle, base_url),
            created_at=utc_time(dt.datetime.fromisoformat(created)) if created else local_time(
                min((t.datetime_start for t in trials if t.datetime_start), default=None)
            ),
            spec=handle.spec.model_dump(mode="json"),
        )

    def best(self, name: str, k: int) -> BestList:
        handle = self._registry.get(name)
        trials = handle.study.get_trials(deepcopy=False)
        base = baseline_trial(trials)
        base_value = base.value if base else None
        return BestList(
            study=name,
            baseline=best_trial(handle, base, base_value) if base else None,
            trials=[best_trial(handle, t, base_value) for t in ranked(handle, trials)[:k]],
        )

    def trials(self, name: str) -> list[TrialPublic]:
        handle = self._registry.get(name)
        trials = handle.study.get_trials(deepcopy=False)
        top_k = {t.number for t in ranked(handle, trials)[: self._keep_top_k]}
        return [trial_public(handle, t, top_k) for t in trials]

    def stop(self, name: str, base_url: str) -> StudyPublic:
        handle = self._registry.get(name)
        self._backend.set_stopped(handle.study_id, True)
        logger.info("stopped study %s", name)
        return self.summary(name, base_url, handle=handle)

    def resume(self, name: str, base_url: str) -> StudyPublic:
        """Undo `stop`: hand out trials again. A study that is not stopped is left as it is."""
        handle = self._registry.get(name)
        if self._registry.is_stopped(handle):
            self._backend.set_stopped(handle.study_id, False)
            logger.info("resumed study %s", name)
        return self.summary(name, base_url, handle=handle)

    def delete(self, name: str) -> None:
        handle = self._registry.get(name)
        trials = handle.study.get_trials(deepcopy=False)
        self._backend.delete_study(name)
        self._registry.forget(name)
        self._artifacts.remove_all(trials)
        logger.info("deleted study %s", name)

"""Study resources: create, list, summarise, rank, change, stop, resume and delete."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import OrderedDict

from service import keys
from service.artifacts import Artifacts
from service.budget import Budget
from service.errors import Conflict, NotFound
from service.grid import assigned_grid_ids, grid_left
from service.preflight_state import Preflight, retry
from service.registry import StudyHandle, StudyRegistry
from service.schemas import BestList, StudyPatch, StudyPublic, TrialPublic
from service.spec import StudySpec
from service.storage import Backend, StudyRow, StudyState
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
    def __init__(
        self,
        backend: Backend,
        registry: StudyRegistry,
        artifacts: Artifacts,
        public_url: str | None,
        keep_top_k: int,
    ) -> None:
        self._backend = backend
        self._registry = registry
        self._artifacts = artifacts
        self._public_url = (public_url or "").rstrip("/")
        self._keep_top_k = keep_top_k
        # Summaries of done studies, which never change until their spec does (a new version).
        self._done: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._done_lock = threading.Lock()

    def dashboard_url(self, handle: StudyHandle, base_url: str) -> str:
        base = self._public_url or base_url.rstrip("/")
        return f"{base}/dashboard/studies/{handle.study_id}"

    def create(self, spec: StudySpec, base_url: str) -> StudyPublic:
        handle = self._registry.create(spec)
        logger.info("created study %s (%d trials)", spec.name, spec.n_trials)
        return self.summary(spec.name, base_url, handle=handle)

    def list_json(
        self,
        base_url: str,
        state: StudyState | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> bytes:
        """The studies (StudyPublic) as the JSON array the API answers, joined from each
        study's JSON."""
        return b"[" + b",".join(self._list_parts(base_url, state, limit, offset)) + b"]"

    def _list_parts(
        self, base_url: str, state: StudyState | None, limit: int | None, offset: int
    ) -> list[bytes]:
        """Studies in creation order, a page of them, optionally of one state, each as JSON.

        The studies not yet marked done are summarised first, and marked when they are: then
        the page and the state filter are one query, and a done study's summary, which never
        changes, comes from this process's memory, serialised already. Finished history costs
        nothing per call."""
        fresh = self._settle(base_url)
        out = []
        for row in self._backend.study_page(state, limit, offset):
            # A study deleted meanwhile by another process is skipped; anything else, the
            # database gone above all, is no shorter list.
            try:
                summary = fresh.get(row.study_id)
                out.append(
                    summary.model_dump_json().encode()
                    if summary is not None
                    else self._done_summary(row, base_url)
                )
            except NotFound:
                logger.debug("skipping study %s", row.name, exc_info=True)
        return out

    def _settle(self, base_url: str) -> dict[int, StudyPublic]:
        """The summaries of the studies not marked done; those that are done get marked."""
        out = {}
        for row in self._backend.not_done_studies():
            try:
                handle = self._registry.open(row.study_id, row.name, row.spec_version)
                summary = self.summary(row.name, base_url, handle=handle)
            except NotFound:
                continue
            if summary.state == "done":
                self._backend.mark_done(row.study_id, row.spec_version)
            out[row.study_id] = summary
        return out

    _DONE_KEPT = 4096

    def _done_summary(self, row: StudyRow, base_url: str) -> bytes:
        """The summary of a study marked done, as JSON."""
        key = (row.study_id, row.created_at, row.spec_version, base_url)
        with self._done_lock:
            if key in self._done:
                self._done.move_to_end(key)
                return self._done[key]
        handle = self._registry.open(row.study_id, row.name, row.spec_version)
        summary = self.summary(row.name, base_url, handle=handle).model_dump_json().encode()
        with self._done_lock:
            self._done[key] = summary
            while len(self._done) > self._DONE_KEPT:
                self._done.popitem(last=False)
        return summary

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
        attrs = self._backend.study_system_attrs(handle.study_id)
        preflight = Preflight.of(attrs)
        if preflight.error is not None:
            state, reason = "error", f"the preflight failed: {preflight.error}"
        elif budget.ended():
            state = "done"
        elif attrs.get(keys.STOPPED):
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
            created_at=utc_time(dt.datetime.fromisoformat(created))
            if created
            else local_time(
                min((t.datetime_start for t in trials if t.datetime_start), default=None)
            ),
            spec=handle.spec.model_dump(mode="json"),
            priority=handle.spec.scheduling.priority,
            weight=handle.spec.scheduling.weight,
            error=preflight.error,
            preflight=preflight.state,
            data=preflight.data,
        )

    def patch(self, name: str, change: StudyPatch, base_url: str) -> StudyPublic:
        """Change the budget and the scheduling in the stored spec (the source of truth); every
        server process sees the new spec version at its next read of the study."""
        handle = self._registry.get(name)
        # Under the claim lock: no trial starts between the count and the new budget.
        with self._backend.claim_lock.hold(handle.study_id):
            stored = self._backend.study_user_attrs(handle.study_id)[keys.SPEC]
            changed = dict(stored)
            if change.n_trials is not None:
                self._check_budget(handle, change.n_trials)
                changed["n_trials"] = change.n_trials
            if change.scheduling is not None:
                given = change.scheduling.model_dump(
                    mode="json", include=change.scheduling.model_fields_set
                )
                changed["scheduling"] = {**(stored.get("scheduling") or {}), **given}
            spec = StudySpec.model_validate(changed).model_dump(mode="json")
            if spec != stored:
                self._backend.update_spec(handle.study_id, spec)
        if spec != stored:
            logger.info(
                "changed study %s: n_trials %s, scheduling %s",
                name,
                spec["n_trials"],
                spec["scheduling"],
            )
        return self.summary(name, base_url)

    def _check_budget(self, handle: StudyHandle, n_trials: int) -> None:
        budget = Budget.from_census(*self._backend.trial_census(handle.study_id), n_trials)
        c = budget.counts
        floor = budget.finished + budget.in_flight
        if n_trials < floor:
            paused = f", {c.paused} paused" if c.paused else ""
            raise Conflict(
                f"n_trials {n_trials} is below the {floor} trials study {handle.name!r} has "
                f"finished or in flight ({budget.finished} finished, {c.running} running, "
                f"{c.waiting} waiting{paused})",
                field="n_trials",
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
            objective=handle.spec.objective.model_dump(),
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
        """Undo `stop`, and clear a failed preflight's error (the next claim runs the
        preflight again): hand out trials again. Any other study is left as it is."""
        handle = self._registry.get(name)
        if self._registry.is_stopped(handle):
            self._backend.set_stopped(handle.study_id, False)
            logger.info("resumed study %s", name)
        if retry(self._backend, handle.study_id):
            logger.info("study %s: its preflight runs again", name)
        return self.summary(name, base_url, handle=handle)

    def delete(self, name: str) -> None:
        handle = self._registry.get(name)
        trials = handle.study.get_trials(deepcopy=False)
        self._backend.delete_study(name)
        self._registry.forget(name)
        self._artifacts.remove_all(trials)
        logger.info("deleted study %s", name)

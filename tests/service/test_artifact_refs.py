"""The artifact garbage collection's light queries (`Backend.artifact_refs`) keep what a read
of every trial kept: the checkpoints of unfinished trials, and the weights of the top k as
`service.views.ranked` ranks them (either direction, infinite values, ties by number, prior
trials never ranked). Real storage on both backends."""

from __future__ import annotations

import datetime as dt
import random
from types import SimpleNamespace

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState

from service import keys
from service.storage import Backend
from service.views import ranked

STATES = [TrialState.COMPLETE] * 6 + [TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING]
VALUES = [0.5, 0.25, 0.25, 1.0, float("inf"), float("-inf"), 0.75, 0.125]


def _trial(rng: random.Random, i: int) -> FrozenTrial:
    state = rng.choice(STATES)
    system = {f"{keys.ARTIFACT_PREFIX}a{i}": "meta", keys.WEIGHTS: f"w{i}"}
    if rng.random() < 0.7:
        system[keys.CHECKPOINT] = {"artifact_id": f"c{i}", "epoch": 1}
        system[f"{keys.ARTIFACT_PREFIX}c{i}"] = "meta"
    now = dt.datetime.now()
    return FrozenTrial(
        number=i,
        state=state,
        value=rng.choice(VALUES) if state == TrialState.COMPLETE else None,
        datetime_start=now,
        datetime_complete=None if state == TrialState.RUNNING else now,
        params={},
        distributions={},
        user_attrs={keys.PRIOR: True} if rng.random() < 0.15 else {},
        system_attrs=system,
        intermediate_values={0: 0.9},
        trial_id=i,
    )


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_the_queries_keep_what_reading_every_trial_keeps(
    backend_store: Backend, direction: str
) -> None:
    study = optuna.create_study(
        storage=backend_store._storage, study_name=f"refs-{direction}", direction=direction
    )
    rng = random.Random(7)
    for i in range(60):
        study.add_trial(_trial(rng, i))
    study.enqueue_trial({})  # a waiting trial with a checkpoint of its own
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING][0]
    backend_store.set_system_attr(waiting._trial_id, keys.CHECKPOINT, {"artifact_id": "cw"})
    trials = study.get_trials()
    handle = SimpleNamespace(spec=SimpleNamespace(objective=SimpleNamespace(direction=direction)))
    unfinished = [t for t in trials if not t.state.is_finished()]
    for k in (0, 1, 3, 10):
        refs = backend_store.artifact_refs(study._study_id, k, direction == "maximize")
        top = ranked(handle, trials)[:k]  # type: ignore[arg-type]
        assert refs.top_weights == {t.system_attrs[keys.WEIGHTS] for t in top}, k
        assert refs.checkpoints == {
            t.system_attrs[keys.CHECKPOINT]["artifact_id"]
            for t in unfinished
            if keys.CHECKPOINT in t.system_attrs
        }
        assert "cw" in refs.checkpoints
        assert refs.finished == {
            key.removeprefix(keys.ARTIFACT_PREFIX)
            for t in trials
            if t.state.is_finished()
            for key in t.system_attrs
            if key.startswith(keys.ARTIFACT_PREFIX)
        }
    # The ranking met what it has to get right: infinities, ties and prior trials.
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert {float("inf"), float("-inf")} <= {t.value for t in complete}
    assert any(t.user_attrs.get(keys.PRIOR) for t in complete)
    assert len({t.value for t in complete}) < len(complete)


@pytest.mark.parametrize("after_query", [1, 2, 3])
def test_a_trial_that_completes_during_the_queries_keeps_its_weights(
    backend_store: Backend, after_query: int
) -> None:
    """The queries see the trials as they are when each runs: a trial that completes (as the
    best) between two of them must not have its weights counted finished-but-not-top, which
    the collection would remove (a test once saw the best trial's weights gone)."""
    study = optuna.create_study(
        storage=backend_store._storage, study_name=f"refs-race-{after_query}"
    )
    done, best = study.ask(), study.ask()  # best runs until the chosen query has run
    for trial, name in ((done, "w-done"), (best, "w-best")):
        backend_store.set_system_attr(trial._trial_id, keys.WEIGHTS, name)
        backend_store.set_system_attr(trial._trial_id, f"{keys.ARTIFACT_PREFIX}{name}", "meta")
    study.tell(done, 0.5)
    engine = backend_store._engine
    seen = []

    def complete_best(*_args: object) -> None:
        seen.append(1)
        if len(seen) == after_query:
            backend_store.complete_trial(best._trial_id, 0.1, {})

    sa.event.listen(engine, "after_cursor_execute", complete_best)
    try:
        refs = backend_store.artifact_refs(study._study_id, 1, maximize=False)
    finally:
        sa.event.remove(engine, "after_cursor_execute", complete_best)
    assert len(seen) >= after_query
    removed = refs.finished - refs.checkpoints - refs.top_weights
    assert "w-best" not in removed
    assert study.best_trial.number == best.number

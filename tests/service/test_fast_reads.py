"""The protocol's cheap reads agree with Optuna's own: a trial's facts read with plain queries
equal what `get_trial` returns, and percentile pruners decide the same on the completed-trials
view as on the study itself. Real storage on both backends."""

from __future__ import annotations

import math
import random

import optuna
import pytest
from optuna.trial import TrialState

from service.budget import Budget
from service.errors import NotFound
from service.pruning import CompletedTrials, CompletedTrialsStudy, reads_completed_only
from service.storage import Backend
from service.trial_cache import StudyTrials


@pytest.fixture
def raw(fresh_url: str, backend_store: Backend) -> optuna.storages.BaseStorage:
    """Optuna's own storage on the same database, to make and read trials the Backend's way
    is compared with."""
    return optuna.storages.RDBStorage(fresh_url)


def test_trial_facts_equal_optunas_trial(
    raw: optuna.storages.BaseStorage, backend_store: Backend
) -> None:
    study = optuna.create_study(storage=raw, study_name="facts")
    curve = {0: 1.5, 1: math.inf, 2: -math.inf, 3: math.nan, 4: -0.25}
    running = study.ask()
    for step, value in curve.items():
        running.report(value, step)
    running.set_user_attr("worker", "gpu-host-3")
    raw.set_trial_system_attr(running._trial_id, "artifacts:abc", {"x": 1})
    done = study.ask()
    done.report(0.5, 0)
    study.tell(done, 0.4)

    for trial in (running, done):
        stored = raw.get_trial(trial._trial_id)
        facts = backend_store.trial_facts(trial._trial_id)
        assert facts is not None
        assert (facts.study_id, facts.study_name) == (study._study_id, "facts")
        assert (facts.number, facts.state) == (stored.number, stored.state)
        assert facts.worker == stored.user_attrs.get("worker")
        assert facts.has_artifacts == any(k.startswith("artifacts:") for k in stored.system_attrs)
        assert facts.intermediate_values.keys() == stored.intermediate_values.keys()
        for step, value in stored.intermediate_values.items():
            assert facts.intermediate_values[step] == pytest.approx(value, nan_ok=True)
        assert facts.frozen().intermediate_values == facts.intermediate_values
        assert facts.frozen().last_step == stored.last_step
        assert facts.completed_in_study == 1
    with pytest.raises(NotFound):
        backend_store.trial_facts(10**9)
    assert backend_store.study_of_trial(done._trial_id) == (study._study_id, "facts")
    assert backend_store.study_of_trial(10**9) is None


@pytest.mark.parametrize(
    "pruner",
    [
        optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
        optuna.pruners.PercentilePruner(25.0, n_startup_trials=2, n_min_trials=3),
        optuna.pruners.ThresholdPruner(upper=0.9),
    ],
    ids=["median", "percentile", "threshold"],
)
def test_completed_trials_view_prunes_as_the_study_does(
    raw: optuna.storages.BaseStorage, backend_store: Backend, pruner: optuna.pruners.BasePruner
) -> None:
    assert reads_completed_only(pruner)
    study = optuna.create_study(
        storage=raw, pruner=pruner, study_name=f"view-{type(pruner).__name__}"
    )
    rng = random.Random(7)

    def curve(trial: optuna.Trial, steps: int) -> None:
        start = rng.uniform(0.5, 1.5)
        for step in range(steps):
            trial.report(start * 0.9**step + rng.uniform(-0.05, 0.05), step)

    completed, kept = CompletedTrials(), StudyTrials()
    decisions = set()
    for round_ in range(12):
        finished = study.ask()
        curve(finished, 6)
        if round_ % 5 == 4:
            study.tell(finished, state=TrialState.PRUNED)
        else:
            study.tell(finished, rng.uniform(0.2, 1.0))
        running = study.ask()  # stays running: the view must not need it
        curve(running, rng.randint(1, 6))
        facts = backend_store.trial_facts(running._trial_id)
        assert facts is not None
        trials = completed.get(study, backend_store, facts.completed_in_study, kept)
        assert [(t.number, t.value) for t in trials] == [
            (t.number, t.value) for t in study.get_trials(states=(TrialState.COMPLETE,))
        ]
        # none new: nothing read again
        assert completed.get(study, backend_store, facts.completed_in_study, kept) is trials
        view = CompletedTrialsStudy(study, trials)
        expected = pruner.prune(study, raw.get_trial(running._trial_id))
        assert pruner.prune(view, facts.frozen()) == expected  # type: ignore[arg-type]
        decisions.add(expected)
    assert decisions == {True, False}  # both outcomes were compared


def test_successive_halving_reads_the_study_itself() -> None:
    assert not reads_completed_only(optuna.pruners.SuccessiveHalvingPruner())
    assert not reads_completed_only(optuna.pruners.HyperbandPruner())


def test_trial_census_gives_the_budget_of_the_trials(
    raw: optuna.storages.BaseStorage, backend_store: Backend
) -> None:
    study = optuna.create_study(storage=raw, study_name="census")
    retry = optuna.storages.RetryFailedTrialCallback(max_retry=2)
    census = backend_store.trial_census(study._study_id)
    assert Budget.from_census(*census, 10) == Budget.of([], 10)
    for value in (0.3, 0.2):
        study.tell(study.ask(), value)
    study.tell(study.ask(), state=TrialState.PRUNED)
    study.ask()  # running
    study.tell(study.ask(), state=TrialState.FAIL)  # fails for good
    handed_back = study.ask()  # fails and is retried: not a final failure
    study.tell(handed_back, state=TrialState.FAIL)
    retry(study, raw.get_trial(handed_back._trial_id))  # a waiting copy
    for n_trials in (3, 6, 8):
        expected = Budget.of(study.get_trials(deepcopy=False), n_trials)
        census = backend_store.trial_census(study._study_id)
        assert Budget.from_census(*census, n_trials) == expected
    assert expected.counts.waiting == 1 and expected.counts.fail == 2
    assert expected.failed_final == 1


def test_completed_trials_are_the_ones_the_sampler_view_read(
    raw: optuna.storages.BaseStorage, backend_store: Backend
) -> None:
    """The pruner's completed trials come from the sampler view's finished trials: after a
    restart all at once, then only the new ones, and no trial read twice."""
    study = optuna.create_study(storage=raw, study_name="bulk")

    def complete(value: float) -> None:
        trial = study.ask()
        trial.report(value, 0)
        study.tell(trial, value)

    for i in range(20):
        complete(i / 10)
    study.tell(study.ask(), state=TrialState.PRUNED)  # finished, not completed
    study.ask()  # running: never among them
    completed, kept = CompletedTrials(), StudyTrials()
    read: list[int] = []
    trials_by_id = backend_store.trials_by_id

    def counted(study_id: int, trial_ids: list[int]) -> list:
        read.extend(trial_ids)
        return trials_by_id(study_id, trial_ids)

    backend_store.trials_by_id = counted  # type: ignore[method-assign]
    for more in (0, 1, 2):
        for _ in range(more):
            complete(0.05 * more)
        expected = study.get_trials(states=(TrialState.COMPLETE,))
        kept.finished(backend_store, study)  # the sampler's view looks first, as in a claim
        trials = completed.get(study, backend_store, len(expected), kept)
        assert [(t.number, t.value) for t in trials] == [(t.number, t.value) for t in expected]
    assert sorted(read) == sorted(t._trial_id for t in study.get_trials() if t.state.is_finished())


def test_study_system_attrs_equal_optunas(
    raw: optuna.storages.BaseStorage, backend_store: Backend
) -> None:
    """hpsearch's study state (stopped, preflight, error) read in one query is what Optuna's
    get_study_system_attrs gives; an unknown study is NotFound."""
    bare = raw.create_new_study([optuna.study.StudyDirection.MINIMIZE], "bare")
    assert backend_store.study_system_attrs(bare) == raw.get_study_system_attrs(bare) == {}
    assert backend_store.is_stopped(bare) is False
    full = raw.create_new_study([optuna.study.StudyDirection.MINIMIZE], "full")
    attrs = {"hpsearch:stopped": True, "nested": {"a": [1, None, "x"]}, "n": 2.5}
    for key, value in attrs.items():
        raw.set_study_system_attr(full, key, value)
    assert backend_store.study_system_attrs(full) == raw.get_study_system_attrs(full) == attrs
    assert backend_store.is_stopped(full) is True
    with pytest.raises(NotFound):
        backend_store.study_system_attrs(10_000)
    with pytest.raises(NotFound):
        backend_store.is_stopped(10_000)

"""The sampler's kept view of a study (`service.trial_cache`) gives TPE exactly what the study
itself gives: the same trials for every read TPE makes, trials written by another process
(another storage handle) seen at the next look, and the same params sampled from them. Real
storage on both backends."""

from __future__ import annotations

import random
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from service import optuna_internals as internals
from service import trial_queries
from service.storage import Backend
from service.trial_cache import SamplerView, StudyTrials, sample

SPACE = {
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "momentum": FloatDistribution(0.5, 0.99),
    "layers": IntDistribution(1, 4),
    "opt": CategoricalDistribution(["sgd", "adam"]),
    "fixed": IntDistribution(3, 3),  # single-valued: never sampled
}
# Every read TPE (multivariate, constant liar) makes of a study.
READS: list[tuple[TrialState, ...] | None] = [
    None,
    (TrialState.COMPLETE, TrialState.PRUNED),
    (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING),
]


def _tpe(seed: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(
        seed=seed, multivariate=True, constant_liar=True, n_startup_trials=5
    )


def _suggest(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True),
        "momentum": trial.suggest_float("momentum", 0.5, 0.99),
        "layers": trial.suggest_int("layers", 1, 4),
        "opt": trial.suggest_categorical("opt", ["sgd", "adam"]),
        "fixed": trial.suggest_int("fixed", 3, 3),
    }


def _add_history(study: optuna.Study, rng: random.Random, count: int) -> None:
    """Finished trials of every kind, as another process would write them."""
    for _ in range(count):
        trial = study.ask()
        params = _suggest(trial)
        for step in range(rng.randint(1, 4)):
            trial.report(params["lr"] * (step + 1) + rng.random(), step)
        kind = rng.random()
        if kind < 0.2:
            study.tell(trial, state=TrialState.PRUNED)
        elif kind < 0.3:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, rng.random() + params["momentum"])


def _key(trial: FrozenTrial) -> tuple[Any, ...]:
    return (trial.number, trial.state, trial.value, trial.params, trial.distributions)


def _relative(trial: FrozenTrial) -> dict[str, Any]:
    return {k: v for k, v in trial.system_attrs.items() if k.startswith("tpe:relative_params")}


def test_view_reads_what_the_study_reads(fresh_url: str, backend_store: Backend) -> None:
    other = optuna.storages.RDBStorage(fresh_url)  # another server process's writes
    study = optuna.create_study(storage=other, study_name="view", sampler=_tpe(0))
    rng = random.Random(1)
    _add_history(study, rng, 12)
    kept = StudyTrials()
    mine = optuna.load_study(study_name="view", storage=backend_store._storage)
    for round_ in range(4):
        # Unfinished trials of every kind: with params, with only TPE's relative params (its
        # sample written, its params not yet), without any, and one waiting.
        running = study.ask()
        _suggest(running)
        sampling = study.ask()
        other.set_trial_system_attr(
            sampling._trial_id, "tpe:relative_params:0", '{"lr": 0.01, "momentum": 0.9}'
        )
        study.ask()
        study.enqueue_trial({"lr": 0.001, "momentum": 0.6, "layers": 2, "opt": "sgd"})
        trials, _ = kept.snapshot(backend_store, mine)
        view = SamplerView(mine, trials)
        for states in READS:
            expected = study._get_trials(deepcopy=False, states=states)
            got = view._get_trials(deepcopy=False, states=states, use_cache=True)
            assert [_key(t) for t in got] == [_key(t) for t in expected], (round_, states)
            assert [_relative(t) for t in got] == [_relative(t) for t in expected]
            assert [t._trial_id for t in got] == [t._trial_id for t in expected]
        # Trials finished meanwhile, some of them the ones that were running, are seen.
        study.tell(running, 0.5)
        _add_history(study, rng, 3 + 10 * (round_ == 2))  # more than read one by one, once
    finished = kept.finished(backend_store, mine)
    assert [_key(t) for t in finished] == [
        _key(t) for t in study.get_trials(deepcopy=False) if t.state.is_finished()
    ]


def test_whole_trials_are_optunas_field_for_field(
    fresh_url: str, backend_store: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Backend.trials_by_id` (plain SQL, in chunks of ids) gives the FrozenTrials Optuna's
    `get_trial` gives: values, curves with inf and nan, attrs of every JSON type, dates, waiting
    and failed trials; and only the study's own."""
    monkeypatch.setattr(trial_queries, "_CHUNK", 3)  # several chunks from a few trials
    other = optuna.storages.RDBStorage(fresh_url)
    study = optuna.create_study(storage=other, study_name="whole", sampler=_tpe(0))
    _add_history(study, random.Random(3), 7)
    odd = study.ask()
    _suggest(odd)
    for step, value in enumerate([float("inf"), float("-inf"), float("nan"), 0.25]):
        odd.report(value, step)
    odd.set_user_attr("nested", {"a": [1, 2.5, None, "x"], "b": True})
    other.set_trial_system_attr(odd._trial_id, "hpsearch:checkpoint", {"epoch": 3})
    study.tell(odd, 0.125)
    study.enqueue_trial({"lr": 0.001})
    stranger = optuna.create_study(storage=other, study_name="another")
    foreign = stranger.ask()._trial_id

    ids = [t._trial_id for t in study.get_trials(deepcopy=False)]
    got = backend_store.trials_by_id(internals.study_id(study), [*reversed(ids), foreign])
    expected = [other.get_trial(i) for i in ids]
    assert [t.state for t in expected][-2:] == [TrialState.COMPLETE, TrialState.WAITING]
    assert len(got) == len(expected) == 9
    for ours, theirs in zip(got, expected, strict=True):
        assert ours.params == theirs.params and list(ours.params) == list(theirs.params)
        nan_free = {k: v for k, v in ours.intermediate_values.items() if v == v}
        assert nan_free == {k: v for k, v in theirs.intermediate_values.items() if v == v}
        assert sorted(ours.intermediate_values) == sorted(theirs.intermediate_values)
        same = {k: v for k, v in vars(ours).items() if k != "intermediate_values"}
        assert same == {k: v for k, v in vars(theirs).items() if k != "intermediate_values"}


def test_sampled_params_equal_optunas(fresh_url: str, backend_store: Backend) -> None:
    """The same seeded TPE samples the same params for the same trial on the view as through
    Trial.suggest_* on the study (startup trials, then TPE proper with constant liar)."""
    other = optuna.storages.RDBStorage(fresh_url)
    writer = optuna.create_study(storage=other, study_name="same", sampler=_tpe(0))
    rng = random.Random(2)
    kept = StudyTrials()
    compared = 0
    for size in (3, 8, 20):
        _add_history(writer, rng, size - len(writer.trials))
        liar = writer.ask()  # a running trial with params: constant liar's evidence
        _suggest(liar)
        fresh = writer.ask()  # the trial to sample, running, without params
        seed = rng.randrange(2**31)

        view_study = optuna.load_study(
            study_name="same", storage=backend_store._storage, sampler=_tpe(seed)
        )
        frozen = backend_store.trial(fresh._trial_id)
        trials, _ = kept.snapshot(backend_store, view_study)
        got = sample(SamplerView(view_study, trials), frozen, SPACE)
        # The view wrote nothing: the trial has neither params nor TPE's relative params.
        stored = other.get_trial(fresh._trial_id)
        assert stored.params == {} and _relative(stored) == {}

        plain = optuna.load_study(study_name="same", storage=other, sampler=_tpe(seed))
        expected = _suggest(optuna.trial.Trial(plain, fresh._trial_id))
        assert got == expected, size
        writer.tell(liar, 1.0)
        writer.tell(fresh, 0.7)
        compared += 1
    assert compared == 3


def test_params_written_at_once_are_the_trials(backend_store: Backend) -> None:
    study = optuna.create_study(storage=backend_store._storage, study_name="written")
    trial = study.ask()
    params = {"lr": 0.01, "momentum": 0.9, "layers": 2, "opt": "adam", "fixed": 3}
    backend_store.set_params(trial._trial_id, params, SPACE)
    internals.adopt_params(trial, params, SPACE)
    stored = backend_store.trial(trial._trial_id)
    assert stored.params == params and stored.distributions == SPACE
    assert _suggest(trial) == params  # suggest_* answers them, without writing again
    # The checks Optuna makes per param still hold: a finished trial takes no params.
    study.tell(trial, 1.0)
    other = study.ask()
    with pytest.raises(ValueError):  # incompatible with the study's earlier distribution
        backend_store.set_params(other._trial_id, {"lr": 0.5}, {"lr": FloatDistribution(0.1, 1.0)})

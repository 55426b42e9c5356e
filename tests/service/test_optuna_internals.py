"""Pins each private part of Optuna that `service.optuna_internals` relies on: an Optuna upgrade
that moves one fails here, by name, instead of somewhere in the protocol."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from service import optuna_internals as internals
from service.app import quiet_optuna


@pytest.fixture
def study() -> optuna.Study:
    quiet_optuna()
    return optuna.create_study(storage=optuna.storages.InMemoryStorage(), study_name="pins")


def test_study_and_trial_ids_and_storage(study: optuna.Study) -> None:
    trial = study.ask()
    assert internals.study_id(study) == study._storage.get_study_id_from_name("pins")
    assert internals.study_storage(study).get_trial(internals.trial_id(trial)).number == 0
    frozen = study.trials[0]
    assert internals.trial_id(frozen) == internals.trial_id(trial)


def test_frozen_copy_holds_the_suggested_params_and_is_a_copy(study: optuna.Study) -> None:
    trial = study.ask()
    trial.suggest_float("lr", 0.001, 0.1, log=True)
    trial.set_user_attr("worker", "w1")
    frozen = internals.frozen_copy(trial)
    assert frozen.params == {"lr": trial.params["lr"]}
    assert frozen.user_attrs["worker"] == "w1"
    frozen.user_attrs["worker"] = "changed"
    assert internals.frozen_copy(trial).user_attrs["worker"] == "w1"


def test_forgetting_cached_trials_makes_the_study_read_afresh(study: optuna.Study) -> None:
    study.ask()
    assert hasattr(study._thread_local, "cached_all_trials")
    internals.forget_cached_trials(study)
    assert study._thread_local.cached_all_trials is None
    assert len(study.get_trials(deepcopy=False)) == 1


def test_the_grid_sampler_parts() -> None:
    sampler = optuna.samplers.GridSampler({"a": [1, 2], "b": ["x", "y", "z"]}, seed=0)
    points = internals.grid_points(sampler)
    assert len(points) == 6 and all(len(p) == 2 for p in points)
    assert internals.grid_param_names(sampler) == ["a", "b"]
    assert internals.grid_search_space(sampler) == {"a": [1, 2], "b": ["x", "y", "z"]}
    assert internals.grid_value_equal(float("nan"), float("nan"))
    assert not internals.grid_value_equal(1, 2)
    assert 0 <= int(internals.sampler_rng(sampler).choice([0, 1, 2])) <= 2


def test_rdb_writes_and_reads_in_one_transaction(tmp_path: Path) -> None:
    """set_params and set_user_attrs ride RDBStorage's private session helper and its
    *_without_commit writers; fixed_params and adopt_params the Trial's private copies."""
    quiet_optuna()
    rdb = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'pins.db'}")
    study = optuna.create_study(storage=rdb, study_name="rdb-pins")
    dists = {
        "lr": optuna.distributions.FloatDistribution(0.001, 0.1, log=True),
        "opt": optuna.distributions.CategoricalDistribution(["sgd", "adam"]),
    }
    trial = study.ask()
    assert internals.fixed_params(trial) == {}
    internals.set_params(rdb, trial._trial_id, {"lr": 0.01, "opt": "adam"}, dists)
    internals.set_user_attrs(rdb, trial._trial_id, {"worker": "w1", "val_loss": 0.5}, {0: 0.7})
    internals.adopt_params(trial, {"lr": 0.01, "opt": "adam"}, dists)
    assert trial.suggest_float("lr", 0.001, 0.1, log=True) == 0.01  # no sampling, no write
    stored = rdb.get_trial(trial._trial_id)
    assert stored.params == {"lr": 0.01, "opt": "adam"}
    assert stored.user_attrs == {"worker": "w1", "val_loss": 0.5}
    assert stored.intermediate_values == {0: 0.7}
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        internals.set_user_attrs(rdb, trial._trial_id, {"late": 1})
    study.enqueue_trial({"lr": 0.02})
    assert internals.fixed_params(study.ask()) == {"lr": 0.02}


def test_set_user_attrs_writes_what_optunas_own_writers_write(storage_url: str) -> None:
    """The report's write (Core statements on SQLite and PostgreSQL) leaves the trial exactly
    as Optuna's set_trial_user_attr and set_trial_intermediate_value do, overwrites included,
    and refuses what they refuse."""
    quiet_optuna()
    rdb = optuna.storages.RDBStorage(storage_url)
    study = optuna.create_study(storage=rdb, study_name="core-writes")
    ours, theirs = study.ask(), study.ask()
    writes = [
        ({"worker": "w1", "val_loss": 0.5}, {0: 0.7}),
        ({"val_loss": 0.25, "nested": {"a": [1, 2]}}, {1: float("inf"), 2: float("-inf")}),
        ({"val_loss": 0.125}, {0: 0.6, 3: float("nan")}),  # step 0 again: overwritten
    ]
    for attrs, curve in writes:
        internals.set_user_attrs(rdb, ours._trial_id, attrs, curve)
        for key, value in attrs.items():
            rdb.set_trial_user_attr(theirs._trial_id, key, value)
        for step, value in curve.items():
            rdb.set_trial_intermediate_value(theirs._trial_id, step, value)
    got, want = rdb.get_trial(ours._trial_id), rdb.get_trial(theirs._trial_id)
    assert (
        got.user_attrs
        == want.user_attrs
        == {
            "worker": "w1",
            "val_loss": 0.125,
            "nested": {"a": [1, 2]},
        }
    )
    assert sorted(got.intermediate_values) == sorted(want.intermediate_values) == [0, 1, 2, 3]
    assert got.intermediate_values[0] == want.intermediate_values[0] == 0.6
    assert got.intermediate_values[1] == float("inf") and got.intermediate_values[2] == float(
        "-inf"
    )
    assert str(got.intermediate_values[3]) == str(want.intermediate_values[3]) == "nan"
    with pytest.raises(KeyError):
        internals.set_user_attrs(rdb, 10_000, {"x": 1})
    study.tell(ours, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        internals.set_user_attrs(rdb, ours._trial_id, {}, {4: 0.1})
    assert sorted(rdb.get_trial(ours._trial_id).intermediate_values) == [0, 1, 2, 3]
    rdb.engine.dispose()

"""Pins each private part of Optuna that `service.optuna_internals` relies on: an Optuna upgrade
that moves one fails here, by name, instead of somewhere in the protocol."""

from __future__ import annotations

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

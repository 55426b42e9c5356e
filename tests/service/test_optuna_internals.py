"""Pins each private part of Optuna that `service.optuna_internals` relies on: an Optuna upgrade
that moves one fails here, by name, instead of somewhere in the protocol."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from service import optuna_internals as internals
from service.app import quiet_optuna

HEARTBEATS = optuna.storages._rdb.models.TrialHeartbeatModel.__table__


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


def _rows(rdb: optuna.storages.RDBStorage, table: str, trial_id: int) -> list[tuple]:
    """A trial's rows of one of Optuna's tables, without their own ids."""
    columns = {
        "trial_params": "param_name, param_value, distribution_json",
        "trial_values": "objective, value, value_type",
        "trial_user_attributes": "key, value_json",
        "trial_heartbeats": "heartbeat IS NOT NULL",
    }[table]
    with rdb.engine.connect() as conn:
        return sorted(
            tuple(row)
            for row in conn.exec_driver_sql(
                f"SELECT {columns} FROM {table} WHERE trial_id = {int(trial_id)}"
            )
        )


def test_set_params_writes_what_optunas_own_writer_writes(storage_url: str) -> None:
    """A claim's params (Core statements on SQLite and PostgreSQL) are the rows Optuna's
    set_trial_param writes, and it refuses what that refuses."""
    quiet_optuna()
    rdb = optuna.storages.RDBStorage(storage_url)
    study = optuna.create_study(storage=rdb, study_name="core-params")
    dists = {
        "lr": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True),
        "step_size": optuna.distributions.IntDistribution(1, 20),
        "opt": optuna.distributions.CategoricalDistribution(["sgd", "adam", None]),
    }
    params = {"lr": 0.0123, "step_size": 7, "opt": None}
    ours, theirs = study.ask(), study.ask()
    internals.set_params(rdb, ours._trial_id, params, dists)
    for name, value in params.items():
        rdb.set_trial_param(
            theirs._trial_id, name, dists[name].to_internal_repr(value), dists[name]
        )
    assert _rows(rdb, "trial_params", ours._trial_id) == _rows(
        rdb, "trial_params", theirs._trial_id
    )
    assert rdb.get_trial(ours._trial_id).params == params

    other = study.ask()
    wider = {"lr": optuna.distributions.CategoricalDistribution([0.1, 0.01])}
    with pytest.raises(ValueError, match="compatib|differ"):  # not the study's distribution
        internals.set_params(rdb, other._trial_id, {"lr": 0.1}, wider)
    assert _rows(rdb, "trial_params", other._trial_id) == []
    with pytest.raises(KeyError):
        internals.set_params(rdb, 10_000, params, dists)
    study.tell(other, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        internals.set_params(rdb, other._trial_id, params, dists)
    rdb.engine.dispose()


def test_complete_trial_writes_what_optunas_tell_writes(storage_url: str) -> None:
    """A completion (Core statements on SQLite and PostgreSQL) leaves the trial as
    `tell(COMPLETE, skip_if_finished=True)` after set_user_attr does, infinite values
    included; a finished trial keeps its state and nothing is written."""
    quiet_optuna()
    rdb = optuna.storages.RDBStorage(storage_url)
    assert internals.writes_with_core(rdb)
    study = optuna.create_study(storage=rdb, study_name="core-tell")
    attrs = {"val_loss": 0.25, "val_accuracy": 0.75}
    for value in (0.25, float("inf"), float("-inf")):
        ours, theirs = study.ask(), study.ask()
        assert internals.complete_trial(rdb, ours._trial_id, value, attrs) == TrialState.COMPLETE
        for key, attr in attrs.items():
            theirs.set_user_attr(key, attr)
        study.tell(theirs, value, state=TrialState.COMPLETE, skip_if_finished=True)
        got, want = rdb.get_trial(ours._trial_id), rdb.get_trial(theirs._trial_id)
        assert (got.state, got.values, got.user_attrs) == (want.state, want.values, want.user_attrs)
        assert got.datetime_complete is not None and got.datetime_complete >= got.datetime_start
        for table in ("trial_values", "trial_user_attributes"):
            assert _rows(rdb, table, ours._trial_id) == _rows(rdb, table, theirs._trial_id)

    pruned = study.ask()
    study.tell(pruned, state=TrialState.PRUNED)
    assert internals.complete_trial(rdb, pruned._trial_id, 0.5, attrs) == TrialState.PRUNED
    assert _rows(rdb, "trial_values", pruned._trial_id) == []
    assert _rows(rdb, "trial_user_attributes", pruned._trial_id) == []
    done = study.trials[0]
    assert internals.complete_trial(rdb, done._trial_id, 9.0, {"x": 1}) == TrialState.COMPLETE
    assert rdb.get_trial(done._trial_id).values == [0.25]  # the first completion stands
    study.enqueue_trial({})
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING][0]
    with pytest.raises(ValueError, match="Cannot tell a WAITING trial"):
        internals.complete_trial(rdb, waiting._trial_id, 0.5, attrs)
    with pytest.raises(KeyError):
        internals.complete_trial(rdb, 10_000, 0.5, attrs)
    rdb.engine.dispose()


def test_record_heartbeat_writes_what_optunas_own_writer_writes(storage_url: str) -> None:
    """A heartbeat (one upsert on SQLite and PostgreSQL) inserts and then refreshes the row
    Optuna's record_heartbeat does: the database's now, which Optuna's stale check reads."""
    quiet_optuna()
    rdb = optuna.storages.RDBStorage(storage_url, heartbeat_interval=60, grace_period=120)
    study = optuna.create_study(storage=rdb, study_name="core-heartbeat")
    ours, theirs = study.ask(), study.ask()

    def beats() -> dict[int, object]:
        with rdb.engine.connect() as conn:
            rows = conn.execute(sa.select(HEARTBEATS.c.trial_id, HEARTBEATS.c.heartbeat))
            return dict(rows.all())

    for _ in range(2):  # the insert, then the update
        internals.record_heartbeat(rdb, ours._trial_id)
        rdb.record_heartbeat(theirs._trial_id)
        got = beats()
        assert abs((got[ours._trial_id] - got[theirs._trial_id]).total_seconds()) < 2
        assert rdb._get_stale_trial_ids(study._study_id) == []
        with rdb.engine.begin() as conn:  # both an hour old: stale
            conn.execute(
                sa.update(HEARTBEATS).values(heartbeat=got[ours._trial_id] - dt.timedelta(hours=1))
            )
        assert sorted(rdb._get_stale_trial_ids(study._study_id)) == sorted(
            [ours._trial_id, theirs._trial_id]
        )
    internals.record_heartbeat(rdb, ours._trial_id)
    assert rdb._get_stale_trial_ids(study._study_id) == [theirs._trial_id]
    rdb.engine.dispose()


def test_create_running_trial_writes_what_optunas_create_new_trial_writes(
    storage_url: str,
) -> None:
    """A new trial made with Core statements (SQLite and PostgreSQL) is the trial Optuna's
    create_new_trial makes from a running template with the same user attrs, numbered in
    turn with Optuna's own creations; an unknown study is a KeyError."""
    quiet_optuna()
    rdb = optuna.storages.RDBStorage(storage_url)
    study = optuna.create_study(storage=rdb, study_name="core-create")
    attrs = {"worker": "w1", "device": "cuda:0"}
    template = optuna.trial.FrozenTrial(
        number=0,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=dt.datetime.now(),
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs=attrs,
        system_attrs={},
        intermediate_values={},
        trial_id=0,
    )
    made = []
    for ours in (True, False, True, True, False):
        if ours:
            made.append(internals.create_running_trial(rdb, study._study_id, attrs))
        else:
            made.append(rdb.get_trial(rdb.create_new_trial(study._study_id, template)))
    assert [t.number for t in made] == [0, 1, 2, 3, 4]
    for trial in made:
        stored = rdb.get_trial(trial._trial_id)
        assert (stored.number, stored.state, stored.user_attrs) == (
            trial.number,
            TrialState.RUNNING,
            attrs,
        )
        assert stored.datetime_start == trial.datetime_start is not None
        assert stored.datetime_complete is None and stored.params == {}
    assert _rows(rdb, "trial_user_attributes", made[0]._trial_id) == _rows(
        rdb, "trial_user_attributes", made[1]._trial_id
    )
    bare = internals.create_running_trial(rdb, study._study_id, {})
    assert bare.number == 5 and rdb.get_trial(bare._trial_id).user_attrs == {}
    assert study.ask().number == 6
    with pytest.raises(KeyError):
        internals.create_running_trial(rdb, 10_000, attrs)
    assert len(study.trials) == 7
    rdb.engine.dispose()


def test_prune_trial_writes_what_optunas_tell_writes(storage_url: str) -> None:
    """A report's prune (Core statements on SQLite and PostgreSQL) leaves the trial as
    `tell(PRUNED, skip_if_finished=True)` does: the last step's value as the trial's value,
    none when that is NaN or nothing was reported; a finished trial keeps its state."""
    quiet_optuna()
    rdb = optuna.storages.RDBStorage(storage_url)
    study = optuna.create_study(storage=rdb, study_name="core-prune")
    curves = [{0: 0.9, 1: 0.7}, {0: 0.9, 1: float("nan")}, {0: float("inf")}, {}]
    for curve in curves:
        ours, theirs = study.ask(), study.ask()
        for step, value in curve.items():
            ours.report(value, step)
            theirs.report(value, step)
        last = curve[max(curve)] if curve else None
        assert internals.prune_trial(rdb, ours._trial_id, last) == TrialState.PRUNED
        study.tell(theirs, state=TrialState.PRUNED, skip_if_finished=True)
        got, want = rdb.get_trial(ours._trial_id), rdb.get_trial(theirs._trial_id)
        assert (got.state, got.values) == (want.state, want.values), curve
        assert got.datetime_complete is not None
        assert _rows(rdb, "trial_values", ours._trial_id) == _rows(
            rdb, "trial_values", theirs._trial_id
        )
    assert [t.values for t in study.trials[::2]] == [[0.7], None, [float("inf")], None]
    done = study.trials[0]
    assert internals.prune_trial(rdb, done._trial_id, 0.1) == TrialState.PRUNED
    assert rdb.get_trial(done._trial_id).values == [0.7]  # the first end stands
    complete = study.ask()
    study.tell(complete, 0.5)
    assert internals.prune_trial(rdb, complete._trial_id, 0.1) == TrialState.COMPLETE
    with pytest.raises(KeyError):
        internals.prune_trial(rdb, 10_000, 0.5)
    rdb.engine.dispose()


def test_set_params_checks_each_distribution_once_per_study(storage_url: str) -> None:
    """With `compatible`, a param's distribution is looked up in the study once: later claims
    skip the query, and a distribution that disagrees is still refused."""
    quiet_optuna()
    rdb = optuna.storages.RDBStorage(storage_url)
    study = optuna.create_study(storage=rdb, study_name="checked-once")
    dists = {
        "lr": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True),
        "opt": optuna.distributions.CategoricalDistribution(["sgd", "adam"]),
    }
    lookups: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:  # noqa: ANN001
        if statement.startswith("SELECT trial_params.distribution_json"):
            lookups.append(statement)

    first, second = study.ask(), study.ask()
    sa.event.listen(rdb.engine, "before_cursor_execute", count)
    compatible: set[tuple[int, str, str]] = set()
    internals.set_params(rdb, first._trial_id, {"lr": 0.01, "opt": "sgd"}, dists, compatible)
    assert len(lookups) == 2  # one per param
    assert {(name, sid) for sid, name, _ in compatible} == {
        ("lr", study._study_id),
        ("opt", study._study_id),
    }
    internals.set_params(rdb, second._trial_id, {"lr": 0.02, "opt": "adam"}, dists, compatible)
    assert len(lookups) == 2  # none more
    assert rdb.get_trial(second._trial_id).params == {"lr": 0.02, "opt": "adam"}

    sa.event.remove(rdb.engine, "before_cursor_execute", count)
    other = study.ask()
    wider = {"opt": optuna.distributions.CategoricalDistribution(["sgd", "adam", "rmsprop"])}
    with pytest.raises(ValueError, match="dynamic value space"):
        internals.set_params(rdb, other._trial_id, {"opt": "rmsprop"}, wider, compatible)
    assert _rows(rdb, "trial_params", other._trial_id) == []
    assert len(compatible) == 2  # the refused one is not remembered
    rdb.engine.dispose()


def test_a_trial_made_with_its_heartbeat_has_the_row_record_heartbeat_writes(
    storage_url: str,
) -> None:
    """create_running_trial(heartbeat=True) starts the lease in the creation's transaction:
    the heartbeat row that record_heartbeat writes, which Optuna's stale-trial check reads."""
    quiet_optuna()
    rdb = optuna.storages.RDBStorage(storage_url, heartbeat_interval=60)
    study = optuna.create_study(storage=rdb, study_name="born-leased")
    leased = internals.create_running_trial(rdb, study._study_id, {}, heartbeat=True)
    bare = internals.create_running_trial(rdb, study._study_id, {})
    assert _rows(rdb, "trial_heartbeats", bare._trial_id) == []
    assert len(_rows(rdb, "trial_heartbeats", leased._trial_id)) == 1
    internals.record_heartbeat(rdb, bare._trial_id)
    assert _rows(rdb, "trial_heartbeats", leased._trial_id) == _rows(
        rdb, "trial_heartbeats", bare._trial_id
    )
    rdb.engine.dispose()


def test_set_params_then_writes_in_the_same_transaction(storage_url: str) -> None:
    """`then` runs in the params' transaction: when it fails, no param is written."""
    quiet_optuna()
    rdb = optuna.storages.RDBStorage(storage_url)
    study = optuna.create_study(storage=rdb, study_name="params-then")
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True)}
    trial = study.ask()

    def fails(conn: sa.Connection) -> None:
        conn.execute(sa.text("SELECT 1"))
        raise RuntimeError("the worker's row could not be written")

    with pytest.raises(RuntimeError):
        internals.set_params(rdb, trial._trial_id, {"lr": 0.01}, dists, then=fails)
    assert _rows(rdb, "trial_params", trial._trial_id) == []
    seen: list[int] = []
    internals.set_params(
        rdb, trial._trial_id, {"lr": 0.01}, dists, then=lambda conn: seen.append(1)
    )
    assert seen == [1] and rdb.get_trial(trial._trial_id).params == {"lr": 0.01}
    rdb.engine.dispose()

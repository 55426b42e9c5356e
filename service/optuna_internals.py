"""The few private parts of Optuna the server relies on, in one place.

Each is used because the public API has no equivalent for a server that drives studies from
requests instead of `study.optimize`; `tests/service/test_optuna_internals.py` pins every one,
so an Optuna upgrade that moves them fails there first, by name.
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import math
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState

from service.upserts import supported, upsert, upsert_now


def study_id(study: optuna.Study) -> int:
    return study._study_id


def study_storage(study: optuna.Study) -> BaseStorage:
    return study._storage


def trial_id(trial: optuna.trial.Trial | FrozenTrial) -> int:
    return trial._trial_id


def frozen_copy(trial: optuna.trial.Trial) -> FrozenTrial:
    """The trial as it was read when it was created, with the params suggested since: reading it
    again from the database would cost a full read of a running trial."""
    return copy.deepcopy(trial._cached_frozen_trial)


def forget_cached_trials(study: optuna.Study) -> None:
    """What `ask()` does before it creates a trial: the sampler then reads the study afresh."""
    study._thread_local.cached_all_trials = None


# GridSampler's grid, for a server-side subclass (service/grid.py).
def grid_points(sampler: optuna.samplers.GridSampler) -> list[tuple[object, ...]]:
    return sampler._all_grids


def grid_param_names(sampler: optuna.samplers.GridSampler) -> list[str]:
    return sampler._param_names


def grid_search_space(sampler: optuna.samplers.GridSampler) -> dict[str, list[object]]:
    return sampler._search_space


def grid_value_equal(a: object, b: object) -> bool:
    return optuna.samplers.GridSampler._grid_value_equal(a, b)


def sampler_rng(sampler: optuna.samplers.GridSampler):  # noqa: ANN201 - Optuna's _LazyRandomState
    return sampler._rng.rng


def create_running_trial(
    rdb: optuna.storages.RDBStorage,
    study_id: int,
    user_attrs: dict[str, Any],
    heartbeat: bool = False,
) -> FrozenTrial:
    """What `create_new_trial(study_id, template)` writes for a RUNNING trial with `user_attrs`
    and nothing else, in one transaction, as Core statements (SQLite and PostgreSQL only,
    `writes_with_core`): the trial as created. Optuna's ORM flushes an object per row and its
    cached storage then holds the trial, so a trial made here must get its params through
    `set_params` and its end through `complete_trial` or the RDBStorage itself.
    KeyError for no such study. `heartbeat`: with its first heartbeat (what `record_heartbeat`
    writes) in the same transaction, so that its lease starts with it."""
    start = datetime.datetime.now()
    with rdb.engine.begin() as conn:
        # Optuna's lock on the study row serialises numbering between writers on PostgreSQL;
        # SQLite ignores FOR UPDATE, and its insert below takes the database's write lock.
        found = conn.execute(_LOCK_STUDY, {"study_id": study_id}).scalar_one_or_none()
        if found is None:
            raise KeyError(f"No study with study_id {study_id} exists.")
        trial_id = conn.execute(
            _INSERT_TRIAL,
            {
                "study_id": study_id,
                "number": None,
                "state": TrialState.RUNNING,
                "datetime_start": start,
            },
        ).inserted_primary_key[0]
        # Optuna's trial number: the study's trials made before this one (count_past_trials).
        at = {"study_id": study_id, "trial_id_": trial_id}
        number = conn.execute(_PAST_TRIALS, at).scalar_one()
        conn.execute(_SET_NUMBER, {**at, "number_": number})
        if user_attrs:
            conn.execute(
                _INSERT_USER_ATTRS,
                [
                    {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                    for key, value in user_attrs.items()
                ],
            )
        if heartbeat:
            _heartbeat(conn, trial_id)
    return running_trial(number, trial_id, user_attrs, start=start)


def running_trial(
    number: int,
    trial_id: int,
    user_attrs: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    distributions: dict[str, BaseDistribution] | None = None,
    start: datetime.datetime | None = None,
) -> FrozenTrial:
    """A RUNNING FrozenTrial with only these fields (a template, or a trial as created)."""
    return FrozenTrial(
        number=number,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=start or datetime.datetime.now(),
        datetime_complete=None,
        params=dict(params or {}),
        distributions=dict(distributions or {}),
        user_attrs=dict(user_attrs or {}),
        system_attrs={},
        intermediate_values={},
        trial_id=trial_id,
    )


def set_params(
    rdb: optuna.storages.RDBStorage,
    trial_id: int,
    params: dict[str, Any],
    distributions: dict[str, BaseDistribution],
    compatible: set[tuple[int, str, str]] | None = None,
    then: Callable[[sa.Connection], None] | None = None,
) -> None:
    """Every param of a running trial in one transaction, with the checks `set_trial_param`
    makes for each (KeyError for no such trial, UpdateFinishedTrialError for a finished one,
    ValueError for a distribution that disagrees with the study's) and the rows it writes. On
    SQLite and PostgreSQL as Core statements: Optuna's ORM loads the trial and looks up the
    study's distribution once per param (a claim's largest write).

    `compatible`: (study id, param name, distribution JSON) already checked against the study,
    skipped and added to, as Optuna's cached storage does: every row of a param was checked
    against the study's first when written, so one that agreed once agrees for good. This saves
    a query per param per claim (a round trip each on PostgreSQL).

    `then`: more writes for the same transaction (on SQLite and PostgreSQL; the caller makes
    them itself on other databases)."""
    if not writes_with_core(rdb):  # another database: Optuna's own writer
        with _create_scoped_session(rdb.scoped_session, True) as session:
            for name, value in params.items():
                dist = distributions[name]
                rdb._set_trial_param_without_commit(
                    session, trial_id, name, dist.to_internal_repr(value), dist
                )
        return
    with rdb.engine.begin() as conn:
        row = conn.execute(_STATE_AND_STUDY, {"trial_id_": trial_id}).one_or_none()
        if row is None:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        rdb.check_trial_is_updatable(trial_id, row.state)
        as_json = {name: _distribution_json(distributions[name]) for name in params}
        checked = compatible if compatible is not None else set()
        for name in params:
            if (row.study_id, name, as_json[name]) in checked:
                continue
            previous = conn.execute(
                sa.select(_PARAMS.c.distribution_json)
                .join(_TRIALS, _TRIALS.c.trial_id == _PARAMS.c.trial_id)
                .where(_TRIALS.c.study_id == row.study_id, _PARAMS.c.param_name == name)
                .limit(1)
            ).scalar_one_or_none()
            if previous is not None:
                optuna.distributions.check_distribution_compatibility(
                    optuna.distributions.json_to_distribution(previous), distributions[name]
                )
        conn.execute(
            _PARAMS.insert(),
            [
                {
                    "trial_id": trial_id,
                    "param_name": name,
                    "param_value": distributions[name].to_internal_repr(value),
                    "distribution_json": as_json[name],
                }
                for name, value in params.items()
            ],
        )
        if then is not None:
            then(conn)
    checked.update((row.study_id, name, as_json[name]) for name in params)


@functools.lru_cache(maxsize=1024)
def _distribution_json(distribution: BaseDistribution) -> str:
    return optuna.distributions.distribution_to_json(distribution)


def complete_trial(
    rdb: optuna.storages.RDBStorage, trial_id: int, value: float, attrs: dict[str, Any]
) -> TrialState:
    """What `Study.tell(trial, value, state=COMPLETE, skip_if_finished=True)` writes for a
    study whose sampler does nothing after a trial (TPE), with the trial's last user `attrs`,
    in one transaction; returns the state the trial is in afterwards (a trial finished
    meanwhile keeps its state, and nothing is written). `value` is finite or infinite, never
    NaN. KeyError for no such trial, ValueError for one that is not running (as tell). SQLite
    and PostgreSQL only (`writes_with_core`). Optuna's tell reads the whole trial first: a
    tenth of the server's time under load."""
    return _end_trial(rdb, trial_id, TrialState.COMPLETE, value, attrs)


def prune_trial(
    rdb: optuna.storages.RDBStorage, trial_id: int, last_value: float | None
) -> TrialState:
    """What `Study.tell(trial, state=PRUNED, skip_if_finished=True)` writes for a study whose
    sampler does nothing after a trial (TPE), given the value of the trial's last reported step
    (tell stores it as the trial's value unless it is NaN); as `complete_trial` otherwise."""
    if last_value is not None and math.isnan(last_value):
        last_value = None
    return _end_trial(rdb, trial_id, TrialState.PRUNED, last_value, {})


def _end_trial(
    rdb: optuna.storages.RDBStorage,
    trial_id: int,
    state: TrialState,
    value: float | None,
    attrs: dict[str, Any],
) -> TrialState:
    with rdb.engine.begin() as conn:
        # The state test in the UPDATE decides races (the lease sweep, the message twice) on
        # both databases; SQLite ignores FOR UPDATE.
        won = conn.execute(
            _END_RUNNING,
            {"trial_id_": trial_id, "state_": state, "complete_": datetime.datetime.now()},
        ).rowcount
        if not won:
            now = conn.execute(_STATE, {"trial_id_": trial_id}).scalar_one_or_none()
            if now is None:
                raise KeyError(f"No trial with trial_id {trial_id} exists.")
            if not now.is_finished():
                raise ValueError(f"Cannot tell a {now.name} trial.")
            return now
        if value is not None:
            stored, kind = models.TrialValueModel.value_to_stored_repr(value)
            conn.execute(
                upsert(
                    conn.dialect.name, _VALUES, ("trial_id", "objective"), ("value", "value_type")
                ),
                {"trial_id": trial_id, "objective": 0, "value": stored, "value_type": kind},
            )
        if attrs:
            _upsert_user_attrs(conn, trial_id, attrs)
    return state


def record_heartbeat(rdb: optuna.storages.RDBStorage, trial_id: int) -> None:
    """What RDBStorage.record_heartbeat writes (the database's now, inserted or updated), as one
    upsert on SQLite and PostgreSQL, where Optuna's ORM reads the row twice before it writes."""
    if not supported(rdb.engine):
        rdb.record_heartbeat(trial_id)
        return
    with rdb.engine.begin() as conn:
        _heartbeat(conn, trial_id)


def _heartbeat(conn: sa.Connection, trial_id: int) -> None:
    conn.execute(
        upsert_now(conn.dialect.name, _HEARTBEATS, "trial_id", "heartbeat"),
        {"trial_id": trial_id},
    )


def writes_with_core(rdb: optuna.storages.RDBStorage) -> bool:
    """Whether this database takes the Core writers above (SQLite, PostgreSQL)."""
    return supported(rdb.engine)


def fixed_params(trial: optuna.trial.Trial) -> dict[str, Any]:
    """The params a waiting trial was enqueued with (`enqueue_trial`), empty for a new one."""
    return trial._fixed_params


def adopt_params(
    trial: optuna.trial.Trial, params: dict[str, Any], distributions: dict[str, BaseDistribution]
) -> None:
    """Tell the Trial object that these params are stored: its suggest_* then return them
    without sampling or writing, as for params it suggested itself."""
    trial._cached_frozen_trial.params.update(params)
    trial._cached_frozen_trial.distributions.update({k: distributions[k] for k in params})


def set_user_attrs(
    rdb: optuna.storages.RDBStorage,
    trial_id: int,
    attrs: dict[str, Any],
    curve: dict[int, float] | None = None,
) -> None:
    """A running trial's user attrs, and intermediate values `curve` (step: value), in one
    transaction, with the check that `set_trial_user_attr` and `set_trial_intermediate_value`
    make (KeyError for no such trial, UpdateFinishedTrialError for a finished one) and the rows
    they write. On SQLite and PostgreSQL as Core statements on Optuna's own tables: a state read
    and one upsert per table, where Optuna's ORM loads the trial and its row once per value
    (the report's write was a sixth of the server's time under load)."""
    if not attrs and not curve:
        return
    if not supported(rdb.engine):  # another database: Optuna's own writers
        with _create_scoped_session(rdb.scoped_session, True) as session:
            for key, value in attrs.items():
                rdb._set_trial_attr_without_commit(
                    session, models.TrialUserAttributeModel, trial_id, key, value
                )
            for step, value in sorted((curve or {}).items()):
                rdb._set_trial_intermediate_value_without_commit(session, trial_id, step, value)
        return
    with rdb.engine.begin() as conn:
        state = conn.execute(_STATE, {"trial_id_": trial_id}).scalar_one_or_none()
        if state is None:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        rdb.check_trial_is_updatable(trial_id, state)
        if attrs:
            _upsert_user_attrs(conn, trial_id, attrs)
        if curve:
            rows = []
            for step, value in sorted(curve.items()):
                stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(
                    value
                )
                rows.append(
                    {
                        "trial_id": trial_id,
                        "step": step,
                        "intermediate_value": stored,
                        "intermediate_value_type": kind,
                    }
                )
            conn.execute(
                upsert(
                    conn.dialect.name,
                    _CURVE,
                    ("trial_id", "step"),
                    ("intermediate_value", "intermediate_value_type"),
                ),
                rows,
            )


def _upsert_user_attrs(conn: sa.Connection, trial_id: int, attrs: dict[str, Any]) -> None:
    conn.execute(
        upsert(conn.dialect.name, _USER_ATTRS, ("trial_id", "key"), ("value_json",)),
        [
            {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
            for key, value in attrs.items()
        ],
    )


_STUDIES = models.StudyModel.__table__
_TRIALS = models.TrialModel.__table__
_PARAMS = models.TrialParamModel.__table__
_VALUES = models.TrialValueModel.__table__
_HEARTBEATS = models.TrialHeartbeatModel.__table__
_USER_ATTRS = models.TrialUserAttributeModel.__table__
_CURVE = models.TrialIntermediateValueModel.__table__

# The statements a claim, a report and a trial's end run, built once (see service/upserts.py
# on why). Bound names end in "_" where a column has the name: UPDATE reserves those.
_TRIAL_ID = _TRIALS.c.trial_id == sa.bindparam("trial_id_")
_LOCK_STUDY = (
    sa.select(_STUDIES.c.study_id)
    .where(_STUDIES.c.study_id == sa.bindparam("study_id"))
    .with_for_update()
)
_INSERT_TRIAL = _TRIALS.insert()
_PAST_TRIALS = (
    sa.select(sa.func.count())
    .select_from(_TRIALS)
    .where(
        _TRIALS.c.study_id == sa.bindparam("study_id"),
        _TRIALS.c.trial_id < sa.bindparam("trial_id_"),
    )
)
_SET_NUMBER = sa.update(_TRIALS).where(_TRIAL_ID).values(number=sa.bindparam("number_"))
_INSERT_USER_ATTRS = _USER_ATTRS.insert()
_STATE = sa.select(_TRIALS.c.state).where(_TRIAL_ID)
_STATE_AND_STUDY = sa.select(_TRIALS.c.state, _TRIALS.c.study_id).where(_TRIAL_ID)
_END_RUNNING = (
    sa.update(_TRIALS)
    .where(_TRIAL_ID, _TRIALS.c.state == TrialState.RUNNING)
    .values(state=sa.bindparam("state_"), datetime_complete=sa.bindparam("complete_"))
)

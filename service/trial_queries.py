"""Plain SQL reads for the sampler's view of a study (`service.trial_cache`): which trials
changed since a watermark, the unfinished trials with only what a sampler reads of them, and
newly finished trials whole. Optuna's `get_all_trials` reads every unfinished trial with all
its attributes (five queries and an ORM object per row) twice per TPE sample, and its ORM
read of whole trials spends most of its time building ORM objects. Only `service.storage` runs
these."""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState

_TRIALS = models.TrialModel.__table__
_PARAMS = models.TrialParamModel.__table__
_SYSTEM_ATTRS = models.TrialSystemAttributeModel.__table__
_USER_ATTRS = models.TrialUserAttributeModel.__table__
_VALUES = models.TrialValueModel.__table__
_CURVE = models.TrialIntermediateValueModel.__table__

# TPE's constant liar shares a running trial's sampled params under these keys until the params
# themselves are written (optuna/samplers/_tpe/sampler.py, _RELATIVE_PARAMS_KEY).
RELATIVE_PARAMS_PREFIX = "tpe:relative_params"
UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)

# A study's params share a few distributions: parse each JSON once (distributions are values,
# never changed in place; Optuna's cached storage shares them between trials too).
_distribution = functools.lru_cache(maxsize=1024)(json_to_distribution)


def states_since(
    conn: sa.Connection, study_id: int, after_id: int, open_ids: Collection[int]
) -> list[tuple[int, TrialState]]:
    """(trial id, state) of the study's trials created after `after_id` or among `open_ids`
    (those unfinished when last read): everything that can have changed since."""
    rows = conn.execute(
        _STATES_SINCE if open_ids else _CREATED_SINCE,
        {"study_id": study_id, "after_id": after_id, "open_ids": sorted(open_ids)},
    )
    return [(row.trial_id, row.state) for row in rows]


# Built once (a claim and a sample each run one): see service/upserts.py on why.
_CREATED_SINCE = sa.select(_TRIALS.c.trial_id, _TRIALS.c.state).where(
    _TRIALS.c.study_id == sa.bindparam("study_id"),
    _TRIALS.c.trial_id > sa.bindparam("after_id"),
)
_STATES_SINCE = sa.select(_TRIALS.c.trial_id, _TRIALS.c.state).where(
    _TRIALS.c.study_id == sa.bindparam("study_id"),
    sa.or_(
        _TRIALS.c.trial_id > sa.bindparam("after_id"),
        _TRIALS.c.trial_id.in_(sa.bindparam("open_ids", expanding=True)),
    ),
)


def unfinished(conn: sa.Connection, study_id: int) -> list[FrozenTrial]:
    """The study's running and waiting trials with their params and TPE's relative params:
    all a sampler reads of an unfinished trial."""
    rows = conn.execute(
        sa.select(
            _TRIALS.c.trial_id, _TRIALS.c.number, _TRIALS.c.state, _TRIALS.c.datetime_start
        ).where(_TRIALS.c.study_id == study_id, _TRIALS.c.state.in_(UNFINISHED))
    ).all()
    if not rows:
        return []
    ids = [row.trial_id for row in rows]
    params, dists = _params(conn, ids)
    system = _attrs(conn, _SYSTEM_ATTRS, ids, key_prefix=RELATIVE_PARAMS_PREFIX)
    return [
        FrozenTrial(
            number=row.number,
            state=row.state,
            value=None,
            datetime_start=row.datetime_start
            or (None if row.state == TrialState.WAITING else dt.datetime.now()),
            datetime_complete=None,
            params=params[row.trial_id],
            distributions=dists[row.trial_id],
            user_attrs={},
            system_attrs=system[row.trial_id],
            intermediate_values={},
            trial_id=row.trial_id,
        )
        for row in rows
    ]


# Ids per IN list: a study's first read is its whole history, and SQLite caps the variables of
# one statement (999 before 3.32).
_CHUNK = 500


def whole(conn: sa.Connection, study_id: int, trial_ids: Collection[int]) -> list[FrozenTrial]:
    """These trials of the study, in id order, with everything Optuna's `get_trial` gives (the
    same FrozenTrial, field for field): one query per table, no ORM objects."""
    ids = sorted(trial_ids)
    return [
        trial
        for at in range(0, len(ids), _CHUNK)
        for trial in _whole(conn, study_id, ids[at : at + _CHUNK])
    ]


def _whole(conn: sa.Connection, study_id: int, ids: list[int]) -> list[FrozenTrial]:
    rows = conn.execute(
        sa.select(_TRIALS)
        .where(_TRIALS.c.study_id == study_id, _TRIALS.c.trial_id.in_(ids))
        .order_by(_TRIALS.c.trial_id)
    ).all()
    ids = [row.trial_id for row in rows]  # of this study
    if not ids:
        return []
    values: dict[int, dict[int, float]] = {i: {} for i in ids}
    for row in conn.execute(sa.select(_VALUES).where(_VALUES.c.trial_id.in_(ids))):
        stored = models.TrialValueModel.stored_repr_to_value(row.value, row.value_type)
        values[row.trial_id][row.objective] = stored
    params, dists = _params(conn, ids)
    user = _attrs(conn, _USER_ATTRS, ids)
    system = _attrs(conn, _SYSTEM_ATTRS, ids)
    curves: dict[int, dict[int, float]] = {i: {} for i in ids}
    for row in conn.execute(sa.select(_CURVE).where(_CURVE.c.trial_id.in_(ids))):
        curves[row.trial_id][row.step] = (
            models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                row.intermediate_value, row.intermediate_value_type
            )
        )
    return [
        FrozenTrial(
            number=row.number,
            state=row.state,
            value=None,
            values=[v for _, v in sorted(values[row.trial_id].items())] or None,
            datetime_start=row.datetime_start,
            datetime_complete=row.datetime_complete,
            params=params[row.trial_id],
            distributions=dists[row.trial_id],
            user_attrs=user[row.trial_id],
            system_attrs=system[row.trial_id],
            intermediate_values=curves[row.trial_id],
            trial_id=row.trial_id,
        )
        for row in rows
    ]


def _params(
    conn: sa.Connection, ids: list[int]
) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, BaseDistribution]]]:
    """Each trial's params (in the order Optuna gives them) and their distributions."""
    params: dict[int, dict[str, Any]] = {i: {} for i in ids}
    dists: dict[int, dict[str, BaseDistribution]] = {i: {} for i in ids}
    for trial_id, name, value, dist_json in conn.execute(
        sa.select(
            _PARAMS.c.trial_id,
            _PARAMS.c.param_name,
            _PARAMS.c.param_value,
            _PARAMS.c.distribution_json,
        )
        .where(_PARAMS.c.trial_id.in_(ids))
        .order_by(_PARAMS.c.param_id)
    ):
        dist = _distribution(dist_json)
        dists[trial_id][name] = dist
        params[trial_id][name] = dist.to_external_repr(value)
    return params, dists


def _attrs(
    conn: sa.Connection, table: sa.Table, ids: list[int], key_prefix: str | None = None
) -> dict[int, dict[str, Any]]:
    """Each trial's user or system attrs (`table`), or only those whose key starts with
    `key_prefix`."""
    where = [table.c.trial_id.in_(ids)]
    if key_prefix is not None:
        where.append(table.c.key.startswith(key_prefix, autoescape=True))
    attrs: dict[int, dict[str, Any]] = {i: {} for i in ids}
    for trial_id, key, value in conn.execute(
        sa.select(table.c.trial_id, table.c.key, table.c.value_json).where(*where)
    ):
        attrs[trial_id][key] = json.loads(value)
    return attrs

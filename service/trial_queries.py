"""Plain SQL reads for the sampler's view of a study (`service.trial_cache`): which trials
changed since a watermark, and the unfinished trials with only what a sampler reads of them.
Optuna's `get_all_trials` reads every unfinished trial with all its attributes (five queries
and an ORM object per row) twice per TPE sample. Only `service.storage` runs these."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from optuna.distributions import json_to_distribution
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState

_TRIALS = models.TrialModel.__table__
_PARAMS = models.TrialParamModel.__table__
_SYSTEM_ATTRS = models.TrialSystemAttributeModel.__table__

# TPE's constant liar shares a running trial's sampled params under these keys until the params
# themselves are written (optuna/samplers/_tpe/sampler.py, _RELATIVE_PARAMS_KEY).
RELATIVE_PARAMS_PREFIX = "tpe:relative_params"
_UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)


def states_since(
    conn: sa.Connection, study_id: int, after_id: int, open_ids: Collection[int]
) -> list[tuple[int, TrialState]]:
    """(trial id, state) of the study's trials created after `after_id` or among `open_ids`
    (those unfinished when last read): everything that can have changed since."""
    changed = _TRIALS.c.trial_id > after_id
    if open_ids:
        changed = sa.or_(changed, _TRIALS.c.trial_id.in_(sorted(open_ids)))
    rows = conn.execute(
        sa.select(_TRIALS.c.trial_id, _TRIALS.c.state).where(
            _TRIALS.c.study_id == study_id, changed
        )
    )
    return [(row.trial_id, row.state) for row in rows]


def unfinished(conn: sa.Connection, study_id: int) -> list[FrozenTrial]:
    """The study's running and waiting trials with their params and TPE's relative params:
    all a sampler reads of an unfinished trial."""
    rows = conn.execute(
        sa.select(
            _TRIALS.c.trial_id, _TRIALS.c.number, _TRIALS.c.state, _TRIALS.c.datetime_start
        ).where(_TRIALS.c.study_id == study_id, _TRIALS.c.state.in_(_UNFINISHED))
    ).all()
    if not rows:
        return []
    ids = [row.trial_id for row in rows]
    params: dict[int, dict[str, Any]] = {i: {} for i in ids}
    dists: dict[int, dict[str, Any]] = {i: {} for i in ids}
    for trial_id, name, value, dist_json in conn.execute(
        sa.select(
            _PARAMS.c.trial_id,
            _PARAMS.c.param_name,
            _PARAMS.c.param_value,
            _PARAMS.c.distribution_json,
        ).where(_PARAMS.c.trial_id.in_(ids))
    ):
        dist = json_to_distribution(dist_json)
        dists[trial_id][name] = dist
        params[trial_id][name] = dist.to_external_repr(value)
    system: dict[int, dict[str, Any]] = {i: {} for i in ids}
    for trial_id, key, value in conn.execute(
        sa.select(_SYSTEM_ATTRS.c.trial_id, _SYSTEM_ATTRS.c.key, _SYSTEM_ATTRS.c.value_json).where(
            _SYSTEM_ATTRS.c.trial_id.in_(ids),
            _SYSTEM_ATTRS.c.key.startswith(RELATIVE_PARAMS_PREFIX, autoescape=True),
        )
    ):
        system[trial_id][key] = json.loads(value)
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

"""ASHA's paused trials, `hpsearch_paused`, and the values recorded at a rung. Only
`service.storage` uses it.

A paused trial stays RUNNING in Optuna's tables (its learning curve goes on in the same trial
when it is promoted, and samplers see it as in flight), with one row here while no worker holds
it: the rung it paused at and its value there. Every count of running trials that means "held by
a worker" subtracts these rows. The row goes when the trial is promoted (under the study's claim
lock) or ended.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from optuna.storages._rdb import models
from optuna.trial import TrialState

from service import keys
from service.asha import Paused

metadata = sa.MetaData()

table = sa.Table(
    "hpsearch_paused",
    metadata,
    sa.Column("trial_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("study_id", sa.Integer, nullable=False, index=True),
    sa.Column("epoch", sa.Integer, nullable=False),  # the last epoch its checkpoint holds
    sa.Column("rung", sa.Integer, nullable=False),
    sa.Column("value", sa.Float, nullable=False),
)

_TRIALS = models.TrialModel.__table__
_VALUES = models.TrialIntermediateValueModel.__table__
_USER_ATTRS = models.TrialUserAttributeModel.__table__
_HEARTBEATS = models.TrialHeartbeatModel.__table__


def create(engine: sa.Engine) -> None:
    metadata.create_all(engine)


def insert(
    conn: sa.Connection, trial_id: int, study_id: int, epoch: int, rung: int, value: float
) -> None:
    conn.execute(
        sa.insert(table).values(
            trial_id=trial_id, study_id=study_id, epoch=epoch, rung=rung, value=value
        )
    )


def remove(conn: sa.Connection, trial_id: int) -> bool:
    """Whether the trial was paused (and no longer is)."""
    return conn.execute(sa.delete(table).where(table.c.trial_id == trial_id)).rowcount > 0


def remove_study(conn: sa.Connection, study_id: int) -> None:
    conn.execute(sa.delete(table).where(table.c.study_id == study_id))


def of_study(conn: sa.Connection, study_id: int) -> list[Paused]:
    return [
        Paused(r.trial_id, r.rung, r.value)
        for r in conn.execute(
            sa.select(table.c.trial_id, table.c.rung, table.c.value)
            .where(table.c.study_id == study_id)
            .order_by(table.c.trial_id)
        )
    ]


def counts(conn: sa.Connection, study_ids: list[int] | None = None) -> dict[int, int]:
    """Paused trials by study id (of these studies, or all)."""
    query = sa.select(table.c.study_id, sa.func.count()).group_by(table.c.study_id)
    if study_ids is not None:
        query = query.where(table.c.study_id.in_(study_ids))
    return {study_id: n for study_id, n in conn.execute(query)}


def is_paused(trial_id: Any) -> sa.ColumnElement[bool]:
    """For queries over trials: the trial has a row here."""
    return sa.exists().where(table.c.trial_id == trial_id)


def rung_values(conn: sa.Connection, study_id: int, step: int) -> list[float]:
    """The values recorded at `step` by the study's trials that count at a rung: not failed (a
    retry carries the failed trial's curve on), not waiting, not a warm start's prior trials."""
    return [
        float(v)
        for v in conn.execute(
            sa.select(_VALUES.c.intermediate_value)
            .join(_TRIALS, _TRIALS.c.trial_id == _VALUES.c.trial_id)
            .where(
                _TRIALS.c.study_id == study_id,
                _VALUES.c.step == step,
                _TRIALS.c.state.in_([TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED]),
                _VALUES.c.intermediate_value.is_not(None),
                ~sa.exists().where(
                    _USER_ATTRS.c.trial_id == _TRIALS.c.trial_id, _USER_ATTRS.c.key == keys.PRIOR
                ),
            )
        ).scalars()
    ]


def keep_leases(conn: sa.Connection, study_id: int) -> None:
    """A fresh heartbeat for each of the study's paused trials: the server holds their leases,
    so Optuna's stale check (which knows only RUNNING) leaves them alone."""
    conn.execute(
        sa.update(_HEARTBEATS)
        .where(
            _HEARTBEATS.c.trial_id.in_(
                sa.select(table.c.trial_id).where(table.c.study_id == study_id)
            )
        )
        .values(heartbeat=sa.func.now())  # as Optuna's own record_heartbeat
    )

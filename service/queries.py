"""The plain SQL reads of Optuna's tables that its storage API has no call for (or answers only
by building whole trials through its ORM, the largest cost of a report). Only `service.storage`
runs them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState

from service import keys, paused_table
from service.trial_queries import UNFINISHED

_TRIALS = models.TrialModel.__table__
_STUDIES = models.StudyModel.__table__
_VALUES = models.TrialIntermediateValueModel.__table__
_USER_ATTRS = models.TrialUserAttributeModel.__table__
_SYSTEM_ATTRS = models.TrialSystemAttributeModel.__table__
_STUDY_SYSTEM_ATTRS = models.StudySystemAttributeModel.__table__


@dataclass(frozen=True)
class TrialFacts:
    """What the protocol's frequent messages need of a trial. Read with two plain queries:
    Optuna's `get_trial` builds every attribute of the trial through its ORM, which was the
    largest cost of a report."""

    trial_id: int
    study_id: int
    study_name: str
    number: int
    state: TrialState
    intermediate_values: dict[int, float]
    worker: str | None
    has_artifacts: bool
    completed_in_study: int  # complete trials of its study
    paused_epoch: int | None = None  # the epoch it paused after (asha), while it is paused

    def frozen(self) -> FrozenTrial:
        """The trial as a pruner that reads only its learning curve sees it."""
        return FrozenTrial(
            number=self.number,
            state=self.state,
            value=None,
            datetime_start=None,
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs={},
            intermediate_values=dict(self.intermediate_values),
            trial_id=self.trial_id,
        )


def _facts_statement() -> sa.Select[Any]:
    """A trial's row with its worker, whether it has artifacts, and its study's completed
    count: built once, run for every report and completion."""
    worker = (
        sa.select(_USER_ATTRS.c.value_json)
        .where(_USER_ATTRS.c.trial_id == _TRIALS.c.trial_id, _USER_ATTRS.c.key == keys.WORKER)
        .scalar_subquery()
    )
    artifacts = sa.exists().where(
        _SYSTEM_ATTRS.c.trial_id == _TRIALS.c.trial_id,
        _SYSTEM_ATTRS.c.key.startswith(keys.ARTIFACT_PREFIX, autoescape=True),
    )
    others = _TRIALS.alias()
    completed = (
        sa.select(sa.func.count())
        .where(others.c.study_id == _TRIALS.c.study_id, others.c.state == TrialState.COMPLETE)
        .scalar_subquery()
    )
    return (
        sa.select(
            _TRIALS.c.study_id,
            _STUDIES.c.study_name,
            _TRIALS.c.number,
            _TRIALS.c.state,
            worker.label("worker"),
            artifacts.label("has_artifacts"),
            completed.label("completed"),
            sa.select(paused_table.table.c.epoch)
            .where(paused_table.table.c.trial_id == _TRIALS.c.trial_id)
            .scalar_subquery()
            .label("paused_epoch"),
        )
        .join(_STUDIES, _STUDIES.c.study_id == _TRIALS.c.study_id)
        .where(_TRIALS.c.trial_id == sa.bindparam("trial_id"))
    )


_FACTS = _facts_statement()
_CURVE = sa.select(
    _VALUES.c.step, _VALUES.c.intermediate_value, _VALUES.c.intermediate_value_type
).where(_VALUES.c.trial_id == sa.bindparam("trial_id"))


_VALUE_OF = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value


def trial_facts(conn: sa.Connection, trial_id: int) -> TrialFacts | None:
    row = conn.execute(_FACTS, {"trial_id": trial_id}).first()
    if row is None:
        return None
    values = {
        step: _VALUE_OF(value, kind)
        for step, value, kind in conn.execute(_CURVE, {"trial_id": trial_id})
    }
    return TrialFacts(
        trial_id=trial_id,
        study_id=row.study_id,
        study_name=row.study_name,
        number=row.number,
        state=row.state,
        intermediate_values=values,
        worker=json.loads(row.worker) if row.worker is not None else None,
        has_artifacts=bool(row.has_artifacts),
        completed_in_study=row.completed,
        paused_epoch=row.paused_epoch,
    )


def study_of_trial(conn: sa.Connection, trial_id: int) -> tuple[int, str] | None:
    row = conn.execute(
        sa.select(_STUDIES.c.study_id, _STUDIES.c.study_name)
        .join(_TRIALS, _STUDIES.c.study_id == _TRIALS.c.study_id)
        .where(_TRIALS.c.trial_id == trial_id)
    ).first()
    return (row.study_id, row.study_name) if row is not None else None


_STUDY_ATTRS = (
    sa.select(_STUDY_SYSTEM_ATTRS.c.key, _STUDY_SYSTEM_ATTRS.c.value_json)
    .select_from(_STUDIES)
    .outerjoin(_STUDY_SYSTEM_ATTRS, _STUDY_SYSTEM_ATTRS.c.study_id == _STUDIES.c.study_id)
    .where(_STUDIES.c.study_id == sa.bindparam("study_id"))
)


def study_system_attrs(conn: sa.Connection, study_id: int) -> dict[str, Any] | None:
    """Optuna's `get_study_system_attrs` in one query (its ORM makes two and an object per
    row: a tenth of a claim); None for no such study."""
    rows = conn.execute(_STUDY_ATTRS, {"study_id": study_id}).all()
    if not rows:
        return None
    return {key: json.loads(value) for key, value in rows if key is not None}


def _not_prior() -> sa.ColumnElement[bool]:
    """Trials that are not a warm start's prior evidence (an index lookup per trial: Optuna's
    unique (trial_id, key) constraint on user attrs)."""
    return ~sa.exists().where(
        _USER_ATTRS.c.trial_id == _TRIALS.c.trial_id, _USER_ATTRS.c.key == keys.PRIOR
    )


# Built once, run by every claim (see service/upserts.py on why).
_STATE_COUNTS = (
    sa.select(_TRIALS.c.state, sa.func.count())
    .where(_TRIALS.c.study_id == sa.bindparam("study_id"), _not_prior())
    .group_by(_TRIALS.c.state)
)
_FAILED_NUMBERS = sa.select(_TRIALS.c.number).where(
    _TRIALS.c.study_id == sa.bindparam("study_id"), _TRIALS.c.state == TrialState.FAIL
)


def trial_census(conn: sa.Connection, study_id: int) -> tuple[dict[str, int], list[int], set[int]]:
    """What the budget counts; prior trials (COMPLETE, made at creation) are not counted."""
    at = {"study_id": study_id}
    states = {state.name: n for state, n in conn.execute(_STATE_COUNTS, at)}
    failed = list(conn.execute(_FAILED_NUMBERS, at).scalars())
    retried: set[int] = set()
    if failed:
        for history in system_attr_values(conn, study_id, keys.RETRY_HISTORY):
            retried.update(history)
    return states, failed, retried


def system_attr_values(conn: sa.Connection, study_id: int, key: str) -> list[Any]:
    """The values of one system attr over the study's trials that have it."""
    return [
        json.loads(v)
        for v in conn.execute(
            sa.select(_SYSTEM_ATTRS.c.value_json)
            .join(_TRIALS, _TRIALS.c.trial_id == _SYSTEM_ATTRS.c.trial_id)
            .where(_TRIALS.c.study_id == study_id, _SYSTEM_ATTRS.c.key == key)
        ).scalars()
    ]


def trial_ids(conn: sa.Connection, study_id: int, state: TrialState) -> list[int]:
    return list(
        conn.execute(
            sa.select(_TRIALS.c.trial_id).where(
                _TRIALS.c.study_id == study_id, _TRIALS.c.state == state
            )
        ).scalars()
    )


_NO_HEARTBEAT = sa.text(
    "SELECT t.trial_id FROM trials t"
    " LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id"
    " WHERE t.study_id = :s AND t.state = 'RUNNING' AND h.trial_id IS NULL"
)


def running_without_heartbeat(conn: sa.Connection, study_id: int) -> list[int]:
    return [row[0] for row in conn.execute(_NO_HEARTBEAT, {"s": study_id})]


@dataclass(frozen=True)
class ArtifactRefs:
    """What the artifact garbage collection needs of a study, without reading its trials."""

    checkpoints: set[str]  # artifact ids of unfinished trials' checkpoints (they may resume)
    top_weights: set[str]  # artifact ids of the weights of the top-k COMPLETE trials
    finished: set[str]  # artifact ids held by finished trials


_OBJECTIVE = models.TrialValueModel.__table__
_VALUE_TYPE = models.TrialValueModel.TrialValueType


def artifact_refs(conn: sa.Connection, study_id: int, top_k: int, maximize: bool) -> ArtifactRefs:
    """Four light queries. The top k are ranked as `service.views.ranked` ranks them: by
    value in the study's direction (infinities at their ends, as Optuna's best-trial query
    orders them), then by number; prior trials are not ranked."""
    in_study = _TRIALS.c.study_id == study_id
    # Each query sees the trials as they are when it runs (READ COMMITTED; SQLite outside a
    # transaction), and trials finish meanwhile. So the finished trials' artifacts are read
    # first: a trial that finishes after that read is not collected this time, and one read
    # as finished is ranked (and its checkpoint looked for) by the later queries. The other
    # order removed the weights of a trial that completed between the ranking and this read.
    held = list(
        conn.execute(
            sa.select(_SYSTEM_ATTRS.c.key)
            .join(_TRIALS, _TRIALS.c.trial_id == _SYSTEM_ATTRS.c.trial_id)
            .where(
                in_study,
                _TRIALS.c.state.not_in(UNFINISHED),
                _SYSTEM_ATTRS.c.key.startswith(keys.ARTIFACT_PREFIX, autoescape=True),
            )
        ).scalars()
    )
    checkpoints = list(
        conn.execute(
            sa.select(_SYSTEM_ATTRS.c.value_json)
            .join(_TRIALS, _TRIALS.c.trial_id == _SYSTEM_ATTRS.c.trial_id)
            .where(
                in_study, _TRIALS.c.state.in_(UNFINISHED), _SYSTEM_ATTRS.c.key == keys.CHECKPOINT
            )
        ).scalars()
    )
    infinity = sa.case(
        (_OBJECTIVE.c.value_type == _VALUE_TYPE.INF_NEG, -1),
        (_OBJECTIVE.c.value_type == _VALUE_TYPE.FINITE, 0),
        else_=1,
    )
    best_first = (
        (infinity.desc(), _OBJECTIVE.c.value.desc()) if maximize else (infinity, _OBJECTIVE.c.value)
    )
    top = (
        sa.select(_TRIALS.c.trial_id)
        .join(_OBJECTIVE, _OBJECTIVE.c.trial_id == _TRIALS.c.trial_id)
        .where(
            in_study,
            _TRIALS.c.state == TrialState.COMPLETE,
            _OBJECTIVE.c.objective == 0,
            _not_prior(),
        )
        .order_by(*best_first, _TRIALS.c.number)
        .limit(top_k)
    )
    top_ids = list(conn.execute(top).scalars()) if top_k > 0 else []
    top_weights = conn.execute(
        sa.select(_SYSTEM_ATTRS.c.value_json).where(
            _SYSTEM_ATTRS.c.trial_id.in_(top_ids), _SYSTEM_ATTRS.c.key == keys.WEIGHTS
        )
    ).scalars()
    return ArtifactRefs(
        checkpoints={c["artifact_id"] for c in map(json.loads, checkpoints) if c},
        top_weights={json.loads(v) for v in top_weights},
        finished={key.removeprefix(keys.ARTIFACT_PREFIX) for key in held},
    )

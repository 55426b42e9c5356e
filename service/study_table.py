"""hpsearch's own index of its studies, `hpsearch_studies`: one row per study with the version of
its stored spec and whether it is done. Only `service.storage` uses it.

The spec in the study's user attrs stays the source of truth. The row lets every server process
find, with one indexed query, the few studies a claim has to consider (not done, not stopped),
and see that a study's spec changed (`spec_version`) without reading the spec again.

`done` means the study can hand out no trial again unless its spec changes: nothing is in
flight and its budget is spent (or the grid exhausted, or too many trials failed). Nothing
undoes that except a spec change, which bumps `spec_version` and clears `done` in the same
transaction; a study is marked done only if its version is still the one the decision read.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from optuna.storages._rdb import models
from optuna.trial import TrialState

from service import keys, paused_table

metadata = sa.MetaData()

table = sa.Table(
    "hpsearch_studies",
    metadata,
    sa.Column("study_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("spec_version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
)
# The studies a claim considers: a partial index, so finished history costs nothing to skip.
sa.Index(
    "hpsearch_studies_not_done",
    table.c.study_id,
    postgresql_where=table.c.done == sa.false(),
    sqlite_where=table.c.done == sa.false(),
)

# Running trials, found without reading finished ones (the claim's counts, the lease sweep).
TRIALS_STATE_INDEX = sa.text(
    "CREATE INDEX IF NOT EXISTS hpsearch_trials_state ON trials (state, study_id)"
)

_STUDIES = models.StudyModel.__table__
_TRIALS = models.TrialModel.__table__
_STUDY_USER_ATTRS = models.StudyUserAttributeModel.__table__
_STUDY_SYSTEM_ATTRS = models.StudySystemAttributeModel.__table__

StudyState = Literal["running", "stopped", "done", "error"]


@dataclass(frozen=True)
class StudyRow:
    study_id: int
    name: str
    spec_version: int
    created_at: dt.datetime
    done: bool
    stopped: bool


@dataclass(frozen=True)
class ActiveStudy:
    """A study a claim may consider, with its running trials now."""

    row: StudyRow
    running: int


def _stopped() -> sa.ColumnElement[bool]:
    return sa.exists().where(
        _STUDY_SYSTEM_ATTRS.c.study_id == table.c.study_id,
        _STUDY_SYSTEM_ATTRS.c.key == keys.STOPPED,
        _STUDY_SYSTEM_ATTRS.c.value_json == json.dumps(True),
    )


def _errored() -> sa.ColumnElement[bool]:
    """The study's spec failed its preflight: like stopped, it hands out nothing until resumed."""
    return sa.exists().where(
        _STUDY_SYSTEM_ATTRS.c.study_id == table.c.study_id,
        _STUDY_SYSTEM_ATTRS.c.key == keys.ERROR,
        _STUDY_SYSTEM_ATTRS.c.value_json != json.dumps(None),
    )


def _rows() -> sa.Select[Any]:
    return sa.select(
        table.c.study_id,
        _STUDIES.c.study_name,
        table.c.spec_version,
        table.c.created_at,
        table.c.done,
        _stopped().label("stopped"),
    ).join(_STUDIES, _STUDIES.c.study_id == table.c.study_id)


def _row(r: Any) -> StudyRow:
    return StudyRow(
        r.study_id, r.study_name, r.spec_version, r.created_at, bool(r.done), bool(r.stopped)
    )


def create(engine: sa.Engine) -> None:
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(TRIALS_STATE_INDEX)
        backfill(conn)


def backfill(conn: sa.Connection) -> None:
    """A row for every hpsearch study that has none (created before this table existed): not
    done, so the next claim or listing looks at it once and marks it."""
    spec = sa.exists().where(
        _STUDY_USER_ATTRS.c.study_id == _STUDIES.c.study_id, _STUDY_USER_ATTRS.c.key == keys.SPEC
    )
    missing = ~sa.exists().where(table.c.study_id == _STUDIES.c.study_id)
    ids = conn.execute(sa.select(_STUDIES.c.study_id).where(spec, missing)).scalars().all()
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    for study_id in ids:
        insert(conn, study_id, now)


def insert(conn: sa.Connection, study_id: int, created_at: dt.datetime) -> None:
    values = {"study_id": study_id, "created_at": created_at, "spec_version": 0, "done": False}
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    conn.execute(dialect_insert(table).values(**values).on_conflict_do_nothing())


def delete(conn: sa.Connection, study_id: int) -> None:
    conn.execute(sa.delete(table).where(table.c.study_id == study_id))


def ref(conn: sa.Connection, name: str) -> tuple[int, int] | None:
    """(study id, spec version) of the study named `name`; version 0 for a study with no row."""
    found = conn.execute(
        sa.select(_STUDIES.c.study_id, sa.func.coalesce(table.c.spec_version, 0))
        .outerjoin(table, table.c.study_id == _STUDIES.c.study_id)
        .where(_STUDIES.c.study_name == name)
    ).first()
    return (found[0], found[1]) if found is not None else None


def active(conn: sa.Connection) -> list[ActiveStudy]:
    """The studies that are neither done nor stopped nor in error, oldest first, with their
    running trials:
    two indexed queries, whose cost grows with these studies and their running trials only."""
    rows = [
        _row(r)
        for r in conn.execute(
            _rows()
            .where(table.c.done == sa.false(), ~_stopped(), ~_errored())
            .order_by(table.c.created_at, table.c.study_id)
        )
    ]
    if not rows:
        return []
    running: dict[int, int] = dict(
        conn.execute(  # type: ignore[arg-type]
            sa.select(_TRIALS.c.study_id, sa.func.count())
            .where(
                _TRIALS.c.state == TrialState.RUNNING,
                _TRIALS.c.study_id.in_([r.study_id for r in rows]),
                ~paused_table.is_paused(_TRIALS.c.trial_id),  # held by no worker
            )
            .group_by(_TRIALS.c.study_id)
        ).all()
    )
    return [ActiveStudy(r, running.get(r.study_id, 0)) for r in rows]


def not_done(conn: sa.Connection) -> list[StudyRow]:
    return [
        _row(r)
        for r in conn.execute(_rows().where(table.c.done == sa.false()).order_by(table.c.study_id))
    ]


def page(
    conn: sa.Connection, state: StudyState | None, limit: int | None, offset: int
) -> list[StudyRow]:
    """Studies by id (creation order), optionally of one state as the `done` flag and the
    stopped and error attrs say (an error outranks stopped). The caller marks done studies
    first, so the flag is up to date."""
    query = _rows().order_by(table.c.study_id).offset(offset)
    if state == "done":
        query = query.where(table.c.done == sa.true())
    elif state == "error":
        query = query.where(table.c.done == sa.false(), _errored())
    elif state == "stopped":
        query = query.where(table.c.done == sa.false(), _stopped(), ~_errored())
    elif state == "running":
        query = query.where(table.c.done == sa.false(), ~_stopped(), ~_errored())
    if limit is not None:
        query = query.limit(limit)
    return [_row(r) for r in conn.execute(query)]


def mark_done(conn: sa.Connection, study_id: int, spec_version: int) -> None:
    conn.execute(
        sa.update(table)
        .where(table.c.study_id == study_id, table.c.spec_version == spec_version)
        .values(done=True)
    )


def update_spec(conn: sa.Connection, study_id: int, spec: dict[str, Any]) -> None:
    """The new spec and the bumped version, in the caller's transaction: every process that
    sees the new version reads the new spec."""
    conn.execute(
        sa.update(_STUDY_USER_ATTRS)
        .where(_STUDY_USER_ATTRS.c.study_id == study_id, _STUDY_USER_ATTRS.c.key == keys.SPEC)
        .values(value_json=json.dumps(spec))
    )
    conn.execute(
        sa.update(table)
        .where(table.c.study_id == study_id)
        .values(spec_version=table.c.spec_version + 1, done=False)
    )


def running_trials(conn: sa.Connection) -> dict[tuple[int, str], int]:
    """How many trials run, by (study id, name): the state index, no finished trial read."""
    return {
        (study_id, name): n
        for study_id, name, n in conn.execute(
            sa.select(_TRIALS.c.study_id, _STUDIES.c.study_name, sa.func.count())
            .join(_STUDIES, _STUDIES.c.study_id == _TRIALS.c.study_id)
            .where(_TRIALS.c.state == TrialState.RUNNING)
            .group_by(_TRIALS.c.study_id, _STUDIES.c.study_name)
        )
    }


def counts_by_study(conn: sa.Connection) -> dict[str, dict[str, int]]:
    """Trials by state name (and "paused"), by study name, of hpsearch's studies: two grouped
    queries."""
    out: dict[str, dict[str, int]] = {}
    for name, state, n in conn.execute(
        sa.select(_STUDIES.c.study_name, _TRIALS.c.state, sa.func.count())
        .join(table, table.c.study_id == _STUDIES.c.study_id)
        .outerjoin(_TRIALS, _TRIALS.c.study_id == _STUDIES.c.study_id)
        .group_by(_STUDIES.c.study_name, _TRIALS.c.state)
    ):
        counts = out.setdefault(name, {})
        if state is not None:
            counts[state.name.lower()] = n
    paused = paused_table.table
    for name, n in conn.execute(
        sa.select(_STUDIES.c.study_name, sa.func.count())
        .join(paused, paused.c.study_id == _STUDIES.c.study_id)
        .group_by(_STUDIES.c.study_name)
    ):
        counts = out.setdefault(name, {})
        counts["running"] = counts.get("running", 0) - n  # paused trials are RUNNING to Optuna
        counts["paused"] = n
    return out

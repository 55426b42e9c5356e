"""The process's one connection to the database and artifact store, and the cross-process lock
that serialises claims. Only the registry and the trial protocol use this module."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.artifacts._protocol import ArtifactStore
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState

from service.artifact_store import open_location
from service.init_lock import file_lock, storage_init_lock
from service.settings import Settings

logger = logging.getLogger(__name__)

_metadata = sa.MetaData()

# Connected workers, shared by every server process on the same database.
workers_table = sa.Table(
    "hpsearch_workers",
    _metadata,
    sa.Column("worker_id", sa.String(128), primary_key=True),
    sa.Column("host", sa.String(255), nullable=True),
    sa.Column("device", sa.String(64), nullable=True),
    sa.Column("study", sa.String(128), nullable=True),
    sa.Column("trial_number", sa.Integer, nullable=True),
    sa.Column("trial_id", sa.Integer, nullable=True),
    sa.Column("last_seen", sa.DateTime, nullable=False),
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def open_artifact_store(settings: Settings) -> ArtifactStore:
    """Raises ArtifactStoreError (one line) when the store cannot be used."""
    return open_location(settings.artifacts or str(settings.data_dir / "artifacts"))


class ClaimLock:
    """Serialises claims and stale-trial sweeps of one study across threads and processes.

    PostgreSQL: a transaction-scoped advisory lock, so any number of server processes on any
    hosts agree. SQLite: an flock on a file beside the database (SQLite is single-host anyway).
    """

    def __init__(self, engine: sa.Engine, sqlite_path: Path | None) -> None:
        self._engine = engine
        self._sqlite_path = sqlite_path
        self._local: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()

    def _thread_lock(self, study_id: int) -> threading.Lock:
        with self._guard:
            return self._local.setdefault(study_id, threading.Lock())

    @contextlib.contextmanager
    def hold(self, study_id: int) -> Iterator[None]:
        # The thread lock first: one database connection per process waits, not one per thread.
        with self._thread_lock(study_id):
            if self._engine.dialect.name == "postgresql":
                with self._engine.begin() as conn:
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:a, :b)"),
                                 {"a": 0x6870, "b": study_id})
                    yield
            elif self._sqlite_path is not None:
                suffix = self._sqlite_path.suffix + f".claim-{study_id}.lock"
                with file_lock(self._sqlite_path.with_suffix(suffix)):
                    yield
            else:
                yield


_TRIALS = models.TrialModel.__table__
_STUDIES = models.StudyModel.__table__
_VALUES = models.TrialIntermediateValueModel.__table__
_USER_ATTRS = models.TrialUserAttributeModel.__table__
_SYSTEM_ATTRS = models.TrialSystemAttributeModel.__table__
ARTIFACT_PREFIX = "artifacts:"  # how optuna.artifacts.upload_artifact names its system attrs


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

    def frozen(self) -> FrozenTrial:
        """The trial as a pruner that reads only its learning curve sees it."""
        return FrozenTrial(
            number=self.number, state=self.state, value=None, datetime_start=None,
            datetime_complete=None, params={}, distributions={}, user_attrs={},
            system_attrs={}, intermediate_values=dict(self.intermediate_values),
            trial_id=self.trial_id,
        )


def _facts_statement() -> sa.Select[Any]:
    """A trial's row with its worker, whether it has artifacts, and its study's completed
    count: built once, run for every report and completion."""
    worker = (
        sa.select(_USER_ATTRS.c.value_json)
        .where(_USER_ATTRS.c.trial_id == _TRIALS.c.trial_id, _USER_ATTRS.c.key == "worker")
        .scalar_subquery()
    )
    artifacts = sa.exists().where(
        _SYSTEM_ATTRS.c.trial_id == _TRIALS.c.trial_id,
        _SYSTEM_ATTRS.c.key.startswith(ARTIFACT_PREFIX, autoescape=True),
    )
    others = _TRIALS.alias()
    completed = (
        sa.select(sa.func.count())
        .where(others.c.study_id == _TRIALS.c.study_id, others.c.state == TrialState.COMPLETE)
        .scalar_subquery()
    )
    return (
        sa.select(_TRIALS.c.study_id, _STUDIES.c.study_name, _TRIALS.c.number, _TRIALS.c.state,
                  worker.label("worker"), artifacts.label("has_artifacts"),
                  completed.label("completed"))
        .join(_STUDIES, _STUDIES.c.study_id == _TRIALS.c.study_id)
        .where(_TRIALS.c.trial_id == sa.bindparam("trial_id"))
    )


_FACTS = _facts_statement()
_CURVE = sa.select(
    _VALUES.c.step, _VALUES.c.intermediate_value, _VALUES.c.intermediate_value_type
).where(_VALUES.c.trial_id == sa.bindparam("trial_id"))


@dataclass
class Backend:
    """What one server process holds open: Optuna's storage (with its cache), the artifact store,
    the claim lock and the engine for hpsearch's own small table."""

    storage: optuna.storages.BaseStorage
    rdb: optuna.storages.RDBStorage
    artifacts: ArtifactStore
    claim_lock: ClaimLock

    @property
    def engine(self) -> sa.Engine:
        return self.rdb.engine

    def close(self) -> None:
        self.rdb.remove_session()
        self.rdb.engine.dispose()

    # --- queries Optuna's storage API has no call for ----------------------------------------
    def study_of_trial(self, trial_id: int) -> tuple[int, str] | None:
        """(id, name) of the study that holds the trial, or None when there is no such trial."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(_STUDIES.c.study_id, _STUDIES.c.study_name)
                .join(_TRIALS, _STUDIES.c.study_id == _TRIALS.c.study_id)
                .where(_TRIALS.c.trial_id == trial_id)
            ).first()
        return (row.study_id, row.study_name) if row is not None else None

    def trial_facts(self, trial_id: int) -> TrialFacts | None:
        """The trial's facts, or None when there is no such trial."""
        value_of = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value
        with self.engine.connect() as conn:
            row = conn.execute(_FACTS, {"trial_id": trial_id}).first()
            if row is None:
                return None
            values = {
                step: value_of(value, kind)
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
        )

    def trial_census(self, study_id: int) -> tuple[dict[str, int], list[int], set[int]]:
        """What a study's budget counts, without reading its trials: the number of trials in
        each state (by name), the numbers of the failed ones and of those retried."""
        with self.engine.connect() as conn:
            states = {
                state.name: n
                for state, n in conn.execute(
                    sa.select(_TRIALS.c.state, sa.func.count())
                    .where(_TRIALS.c.study_id == study_id)
                    .group_by(_TRIALS.c.state)
                )
            }
            failed = list(conn.execute(
                sa.select(_TRIALS.c.number)
                .where(_TRIALS.c.study_id == study_id, _TRIALS.c.state == TrialState.FAIL)
            ).scalars())
            histories = conn.execute(
                sa.select(_SYSTEM_ATTRS.c.value_json)
                .join(_TRIALS, _TRIALS.c.trial_id == _SYSTEM_ATTRS.c.trial_id)
                .where(_TRIALS.c.study_id == study_id, _SYSTEM_ATTRS.c.key == "retry_history")
            ).scalars() if failed else []
            retried = {number for history in histories for number in json.loads(history)}
        return states, failed, retried

    def trial_ids(self, study_id: int, state: TrialState) -> list[int]:
        with self.engine.connect() as conn:
            return list(conn.execute(
                sa.select(_TRIALS.c.trial_id)
                .where(_TRIALS.c.study_id == study_id, _TRIALS.c.state == state)
            ).scalars())

    def running_without_heartbeat(self, study_id: int) -> list[int]:
        """Ids of the study's RUNNING trials that have no heartbeat row. Optuna's stale check
        skips such trials forever; a server process that died between handing out a trial and
        recording its first heartbeat leaves one behind."""
        query = sa.text(
            "SELECT t.trial_id FROM trials t"
            " LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id"
            " WHERE t.study_id = :s AND t.state = 'RUNNING' AND h.trial_id IS NULL"
        )
        with self.engine.connect() as conn:
            return [row[0] for row in conn.execute(query, {"s": study_id})]

    # --- connected workers -------------------------------------------------------------------
    def touch_worker(self, worker_id: str, **fields: Any) -> None:
        values = {"worker_id": worker_id, "last_seen": utcnow(), **fields}
        dialect = self.engine.dialect.name
        insert: Any
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(workers_table).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[workers_table.c.worker_id],
            set_={k: stmt.excluded[k] for k in values if k != "worker_id"},
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def list_workers(self, seen_within: float) -> list[dict[str, Any]]:
        since = utcnow() - dt.timedelta(seconds=seen_within)
        query = (
            sa.select(workers_table)
            .where(workers_table.c.last_seen >= since)
            .order_by(workers_table.c.worker_id)
        )
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]


def open_backend(settings: Settings, on_stale: Any) -> Backend:
    """Open the storage named by the settings. `on_stale` is called for each trial whose worker
    stopped sending heartbeats (Optuna's heartbeat machinery), to re-queue it."""
    url = settings.storage_url
    sqlite_path: Path | None = None
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        sqlite_path = Path(url.split("///", 1)[1]) if "///" in url else None
        if sqlite_path is not None:
            sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        # Several threads write; wait for the file lock instead of failing at once.
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
    # The tables of a fresh storage are created check-then-create: one process at a time, or
    # of several server processes starting together all but one fail.
    with storage_init_lock(url, sqlite_path):
        rdb = optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=settings.heartbeat_interval,
            grace_period=settings.grace_period,
            heartbeat_stale_trial_callback=on_stale,
        )
        if sqlite_path is not None:
            with rdb.engine.begin() as conn:
                conn.execute(sa.text("PRAGMA journal_mode=WAL"))
        _metadata.create_all(rdb.engine)
    storage = optuna.storages.get_storage(rdb)
    return Backend(
        storage=storage,
        rdb=rdb,
        artifacts=open_artifact_store(settings),
        claim_lock=ClaimLock(rdb.engine, sqlite_path),
    )

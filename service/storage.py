"""The storage boundary: everything the server reads and writes, in the database and the artifact
store, goes through `Backend`. Optuna's storage, its tables and its private parts stay behind
it (and `service.queries`, `service.optuna_internals`).

The contract, as Optuna's `BaseStorage` states its own:
- thread-safe: one Backend per server process, shared by every request thread;
- every read is of the database now (Optuna's cache holds only finished trials, which never
  change), so several server processes on one database see each other's writes;
- a study, trial or artifact that does not exist raises `NotFound`; the database being
  unreachable raises SQLAlchemy's or Optuna's own errors, which the API answers with 503;
- returned FrozenTrials are shared: callers must not change them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import optuna
import sqlalchemy as sa
from optuna.artifacts import upload_artifact
from optuna.artifacts._protocol import ArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from service import keys, paused_table, queries, study_table, trial_queries
from service import optuna_internals as internals
from service.artifact_store import open_location
from service.asha import Paused
from service.claim_lock import ClaimLock
from service.errors import Conflict, NotFound
from service.init_lock import storage_init_lock
from service.queries import TrialFacts
from service.settings import Settings
from service.study_table import ActiveStudy, StudyRow, StudyState
from service.upserts import upsert

logger = logging.getLogger(__name__)

__all__ = [
    "DATABASE_DOWN",
    "ActiveStudy",
    "Backend",
    "StudyRow",
    "StudyState",
    "TrialFacts",
    "open_backend",
    "utcnow",
]

# Errors that mean "the database cannot be reached right now" (never shown to a client: their
# text can hold the connection URL).
DATABASE_DOWN = (
    optuna.exceptions.StorageInternalError,
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    sa.exc.TimeoutError,
)

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
    sa.Column("labels", sa.Text, nullable=True),  # JSON {key: value}; added after the first release
    # JSON {study: why}: studies this worker skips (its preflight found its machine lacking)
    sa.Column("skipped", sa.Text, nullable=True),
)


def _add_missing_columns(engine: sa.Engine) -> None:
    """Columns added to hpsearch's tables since a database was created."""
    present = {c["name"] for c in sa.inspect(engine).get_columns(workers_table.name)}
    for column in ("labels", "skipped"):
        if column not in present:
            with engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE {workers_table.name} ADD COLUMN {column} TEXT"))


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def open_artifact_store(settings: Settings) -> ArtifactStore:
    """Raises ArtifactStoreError (one line) when the store cannot be used."""
    return open_location(settings.artifacts or str(settings.data_dir / "artifacts"))


@dataclass
class Backend:
    """What one server process holds open: Optuna's storage (with its cache), the artifact store,
    the claim lock and the engine for hpsearch's own table."""

    _storage: optuna.storages.BaseStorage
    _rdb: optuna.storages.RDBStorage
    _artifacts: ArtifactStore
    claim_lock: ClaimLock
    # (study id, param, distribution JSON) checked against the study (`set_params`)
    _compatible: set[tuple[int, str, str]] = field(default_factory=set)

    @property
    def _engine(self) -> sa.Engine:
        return self._rdb.engine

    def close(self) -> None:
        self._rdb.remove_session()
        self._rdb.engine.dispose()

    def ping(self) -> str:
        """Runs one statement; returns the database's kind (sqlite, postgresql)."""
        with self._engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return self._engine.dialect.name

    def describe(self) -> str:
        """The database URL without its password, for logs."""
        return self._engine.url.render_as_string(hide_password=True)

    def dashboard_wsgi(self) -> Any:
        import optuna_dashboard

        return optuna_dashboard.wsgi(self._storage, artifact_store=self._artifacts)

    # --- studies -------------------------------------------------------------------------------
    def create_study(
        self,
        name: str,
        sampler: Any,
        pruner: Any,
        user_attrs: dict[str, Any],
        direction: str = "minimize",
    ) -> optuna.Study:
        """A new study with these attrs, minimising or maximising its objective. Raises
        Conflict when the name is taken."""
        try:
            study = optuna.create_study(
                storage=self._storage,
                study_name=name,
                direction=direction,
                sampler=sampler,
                pruner=pruner,
            )
        except optuna.exceptions.DuplicatedStudyError as exc:
            raise Conflict(f"a study named {name!r} exists", field="name") from exc
        for key, value in user_attrs.items():
            study.set_user_attr(key, value)
        with self._engine.begin() as conn:
            study_table.insert(conn, internals.study_id(study), utcnow())
        return study

    def load_study(self, name: str, sampler: Any, pruner: Any) -> optuna.Study:
        try:
            return optuna.load_study(
                study_name=name, storage=self._storage, sampler=sampler, pruner=pruner
            )
        except KeyError as exc:
            raise NotFound(f"no study named {name!r}") from exc

    def delete_study(self, name: str) -> None:
        study_id = self.study_id(name)
        try:
            optuna.delete_study(study_name=name, storage=self._storage)
        except KeyError as exc:
            raise NotFound(f"no study named {name!r}") from exc
        with self._engine.begin() as conn:
            study_table.delete(conn, study_id)
            paused_table.remove_study(conn, study_id)
        # SQLite may give the id to the next study. set() copies atomically under the GIL; a
        # claim's add to the old set meanwhile is lost, and only costs a check again.
        self._compatible = {c for c in set(self._compatible) if c[0] != study_id}

    def study_id(self, name: str) -> int:
        try:
            return self._storage.get_study_id_from_name(name)
        except KeyError as exc:
            raise NotFound(f"no study named {name!r}") from exc

    def study_ref(self, name: str) -> tuple[int, int]:
        """(id, spec version) of the study named `name`, in one query. Raises NotFound."""
        with self._engine.connect() as conn:
            found = study_table.ref(conn, name)
        if found is None:
            raise NotFound(f"no study named {name!r}")
        return found

    def active_studies(self) -> list[ActiveStudy]:
        """The studies a claim without a study considers (not done, not stopped), oldest first,
        with how many of their trials run."""
        with self._engine.connect() as conn:
            return study_table.active(conn)

    def not_done_studies(self) -> list[StudyRow]:
        with self._engine.connect() as conn:
            return study_table.not_done(conn)

    def study_page(
        self, state: StudyState | None, limit: int | None, offset: int
    ) -> list[StudyRow]:
        with self._engine.connect() as conn:
            return study_table.page(conn, state, limit, offset)

    def mark_done(self, study_id: int, spec_version: int) -> None:
        """The study can hand out no trial until its spec changes; a no-op if it changed since
        `spec_version` was read."""
        with self._engine.begin() as conn:
            study_table.mark_done(conn, study_id, spec_version)

    def update_spec(self, study_id: int, spec: dict[str, Any]) -> None:
        """Replace the stored spec and bump its version, in one transaction (the study is no
        longer done: a claim looks at it again)."""
        with self._engine.begin() as conn:
            study_table.update_spec(conn, study_id, spec)

    def running_trials(self) -> dict[tuple[int, str], int]:
        """How many trials run, by (study id, study name), read through an index on the
        state: finished trials are not read."""
        with self._engine.connect() as conn:
            return study_table.running_trials(conn)

    def trial_counts_by_study(self) -> dict[str, dict[str, int]]:
        with self._engine.connect() as conn:
            return study_table.counts_by_study(conn)

    def study_user_attrs(self, study_id: int) -> dict[str, Any]:
        try:
            return self._storage.get_study_user_attrs(study_id)
        except KeyError as exc:
            raise NotFound(f"no study with id {study_id}") from exc

    def is_stopped(self, study_id: int) -> bool:
        return bool(self.study_system_attrs(study_id).get(keys.STOPPED))

    def set_stopped(self, study_id: int, stopped: bool) -> None:
        self._storage.set_study_system_attr(study_id, keys.STOPPED, stopped)

    def study_system_attrs(self, study_id: int) -> dict[str, Any]:
        """hpsearch's own study state (stopped, preflight, error), read now."""
        with self._engine.connect() as conn:
            attrs = queries.study_system_attrs(conn, study_id)
        if attrs is None:
            raise NotFound(f"no study with id {study_id}")
        return attrs

    def set_study_system_attrs(self, study_id: int, attrs: dict[str, Any]) -> None:
        for key, value in attrs.items():
            self._storage.set_study_system_attr(study_id, key, value)

    def study_names(self) -> list[str]:
        """The names of the studies hpsearch created (others in the database are not ours)."""
        return [s.study_name for s in self._storage.get_all_studies() if keys.SPEC in s.user_attrs]

    def study_of_trial(self, trial_id: int) -> tuple[int, str] | None:
        """(id, name) of the study that holds the trial, or None when there is no such trial."""
        with self._engine.connect() as conn:
            return queries.study_of_trial(conn, trial_id)

    # --- trials: reads -------------------------------------------------------------------------
    def trial(self, trial_id: int) -> FrozenTrial:
        try:
            return self._storage.get_trial(trial_id)
        except KeyError as exc:
            raise NotFound(f"no trial with id {trial_id}") from exc

    def trial_by_number(self, study_id: int, number: int) -> FrozenTrial:
        try:
            return self.trial(
                self._storage.get_trial_id_from_study_id_trial_number(study_id, number)
            )
        except KeyError as exc:
            raise NotFound(f"no trial number {number}") from exc

    def trial_facts(self, trial_id: int) -> TrialFacts:
        """The trial's facts in two plain queries. Raises NotFound."""
        with self._engine.connect() as conn:
            facts = queries.trial_facts(conn, trial_id)
        if facts is None:
            raise NotFound(f"no trial with id {trial_id}")
        return facts

    def trial_census(self, study_id: int) -> tuple[dict[str, int], list[int], set[int]]:
        """What a study's budget counts, without reading its trials: the number of trials in
        each state (by name; PAUSED apart from RUNNING), the numbers of the failed ones and of
        those retried."""
        with self._engine.connect() as conn:
            states, failed, retried = queries.trial_census(conn, study_id)
            paused = paused_table.counts(conn, [study_id]).get(study_id, 0)
        if paused:  # RUNNING to Optuna, held by no worker
            states["RUNNING"] -= paused
            states["PAUSED"] = paused
        return states, failed, retried

    def trial_ids(self, study_id: int, state: TrialState) -> list[int]:
        with self._engine.connect() as conn:
            return queries.trial_ids(conn, study_id, state)

    def grid_ids(self, study_id: int) -> list[int]:
        """The grid combinations (Optuna's `grid_id` system attr) the study's trials hold."""
        with self._engine.connect() as conn:
            return queries.system_attr_values(conn, study_id, keys.GRID_ID)

    def artifact_refs(self, study_id: int, top_k: int, maximize: bool) -> queries.ArtifactRefs:
        """The artifact ids a study's garbage collection weighs (service.artifacts), read
        without building its trials."""
        with self._engine.connect() as conn:
            return queries.artifact_refs(conn, study_id, top_k, maximize)

    def running_without_heartbeat(self, study_id: int) -> list[int]:
        """Ids of the study's RUNNING trials that have no heartbeat row. Optuna's stale check
        skips such trials forever; a server process that died between handing out a trial and
        recording its first heartbeat leaves one behind."""
        with self._engine.connect() as conn:
            return queries.running_without_heartbeat(conn, study_id)

    def trial_states_since(
        self, study_id: int, after_id: int, open_ids: Collection[int]
    ) -> list[tuple[int, TrialState]]:
        """(id, state) of the trials made after `after_id` or among `open_ids`: one light query
        for what changed since a sampler's view last looked (service.trial_cache)."""
        with self._engine.connect() as conn:
            return trial_queries.states_since(conn, study_id, after_id, open_ids)

    def trials_by_id(self, study_id: int, trial_ids: Collection[int]) -> list[FrozenTrial]:
        """These trials of the study, whole, in one read (Optuna's reads them one by one)."""
        with self._engine.connect() as conn:
            return trial_queries.whole(conn, study_id, trial_ids)

    def unfinished_trials(self, study_id: int) -> list[FrozenTrial]:
        """Running and waiting trials with only their params (and TPE's relative params)."""
        with self._engine.connect() as conn:
            return trial_queries.unfinished(conn, study_id)

    # --- trials: writes ------------------------------------------------------------------------
    def create_running_trial(self, study: optuna.Study, user_attrs: dict[str, Any]) -> int:
        """What study.ask() does when no trial waits, without its read of every unfinished
        trial to look for one (the sampler reads them again right after), nor its read of the
        new trial (a claim reads it after its lock); the trial is created with `user_attrs` in
        the same transaction. Returns its id."""
        internals.forget_cached_trials(study)
        template = internals.running_trial(0, 0, user_attrs)
        return self._storage.create_new_trial(internals.study_id(study), template)

    def new_running_trial(self, study_id: int, user_attrs: dict[str, Any]) -> FrozenTrial:
        """A new RUNNING trial with `user_attrs` and its lease's first heartbeat, as created,
        in one transaction of Core statements (`writes_with_core` only). Optuna's cached
        storage does not hold it: its params go through `set_params`, and its end through
        `complete_trial` or Optuna's RDBStorage, never through the study's cached storage."""
        return internals.create_running_trial(self._rdb, study_id, user_attrs, heartbeat=True)

    def set_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """In one transaction (Optuna's set_trial_user_attr is one per attr)."""
        internals.set_user_attrs(self._rdb, trial_id, attrs)

    def record_report(self, trial_id: int, attrs: dict[str, Any], step: int, value: float) -> None:
        """A report: the epoch's attrs and its intermediate value, in one transaction."""
        internals.set_user_attrs(self._rdb, trial_id, attrs, {step: value})

    def set_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._storage.set_trial_system_attr(trial_id, key, value)

    def set_curve(self, trial_id: int, values: dict[int, float]) -> None:
        """Intermediate values (validation loss by epoch)."""
        for step, value in sorted(values.items()):
            self._storage.set_trial_intermediate_value(trial_id, step, value)

    def set_params(
        self,
        trial_id: int,
        params: dict[str, Any],
        distributions: dict[str, Any],
        worker: dict[str, Any] | None = None,
    ) -> None:
        """All of a trial's params in one transaction (Optuna writes one per param); with
        `worker` (`touch_worker`'s arguments), the worker's row too: a claim's last writes,
        one commit instead of two."""
        if worker is None or not self.writes_with_core:
            internals.set_params(self._rdb, trial_id, params, distributions, self._compatible)
            if worker is not None:
                self.touch_worker(**worker)
            return

        def worker_row(conn: sa.Connection) -> None:
            conn.execute(*_worker_row(conn.dialect.name, **worker))

        internals.set_params(
            self._rdb, trial_id, params, distributions, self._compatible, then=worker_row
        )

    @property
    def writes_with_core(self) -> bool:
        """Whether `new_running_trial` and `complete_trial` can be used (SQLite, PostgreSQL)."""
        return internals.writes_with_core(self._rdb)

    def complete_trial(self, trial_id: int, value: float, attrs: dict[str, Any]) -> TrialState:
        """Study.tell(COMPLETE, skip_if_finished) with the last attrs, in one transaction, for
        studies whose sampler does nothing after a trial; the state afterwards."""
        return internals.complete_trial(self._rdb, trial_id, value, attrs)

    def prune_trial(self, trial_id: int, last_value: float | None) -> TrialState:
        """Study.tell(PRUNED, skip_if_finished) for studies whose sampler does nothing after a
        trial, given the value of its last reported step; the state afterwards."""
        return internals.prune_trial(self._rdb, trial_id, last_value)

    def record_heartbeat(self, trial_id: int) -> None:
        internals.record_heartbeat(self._rdb, trial_id)

    # --- ASHA: paused trials (service/paused_table.py) ------------------------------------------
    def pause(self, trial_id: int, study_id: int, epoch: int, rung: int, value: float) -> None:
        """The trial no longer holds a worker: it waits at `rung` with its checkpoint of
        `epoch`. Raises Conflict when it is paused already."""
        try:
            with self._engine.begin() as conn:
                paused_table.insert(conn, trial_id, study_id, epoch, rung, value)
        except sa.exc.IntegrityError as exc:
            raise Conflict(f"trial id {trial_id} is paused already") from exc

    def unpause(self, trial_id: int) -> bool:
        """Take the trial out of the paused ones; False when it was not paused."""
        with self._engine.begin() as conn:
            return paused_table.remove(conn, trial_id)

    def paused(self, study_id: int) -> list[Paused]:
        with self._engine.connect() as conn:
            return paused_table.of_study(conn, study_id)

    def paused_counts(self, study_ids: list[int] | None = None) -> dict[int, int]:
        with self._engine.connect() as conn:
            return paused_table.counts(conn, study_ids)

    def rung_values(self, study_id: int, step: int) -> list[float]:
        """The objective values reported for (0-based) epoch `step` by the trials that count at
        a rung (running, paused, complete or pruned; no prior or failed trial)."""
        with self._engine.connect() as conn:
            return paused_table.rung_values(conn, study_id, step)

    def keep_paused_leases(self, study_id: int) -> None:
        with self._engine.begin() as conn:
            paused_table.keep_leases(conn, study_id)

    # --- artifacts -----------------------------------------------------------------------------
    def upload_artifact(self, trial: FrozenTrial, path: Path, filename: str) -> str:
        """Store the file at `path` (which is moved away) as an artifact of the trial named
        `filename`; returns its id. The file is read once, in chunks, by the store."""
        folder = tempfile.mkdtemp(prefix="hpsearch-upload-", dir=path.parent)
        named = os.path.join(folder, filename)  # Optuna names the artifact after the file
        os.replace(path, named)
        try:
            return upload_artifact(
                artifact_store=self._artifacts,
                file_path=named,
                study_or_trial=trial,
                storage=self._storage,
                mimetype="application/octet-stream",
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(named)
            os.rmdir(folder)

    def open_artifact(self, artifact_id: str, what: str) -> BinaryIO:
        try:
            return self._artifacts.open_reader(artifact_id)
        except ArtifactNotFound as exc:
            raise NotFound(f"the {what} file is gone from the artifact store") from exc

    def remove_artifact(self, artifact_id: str) -> None:
        """Remove it; one already gone (another server process removed it) is fine."""
        try:
            self._artifacts.remove(artifact_id)
        except ArtifactNotFound:
            logger.debug("artifact %s already gone", artifact_id)

    # --- connected workers ---------------------------------------------------------------------
    def touch_worker(
        self, worker_id: str, *, labels: dict[str, str] | None = None, **fields: Any
    ) -> None:
        """Record that the worker was heard from; `labels` (when given) replace its labels."""
        with self._engine.begin() as conn:
            conn.execute(
                *_worker_row(self._engine.dialect.name, worker_id, labels=labels, **fields)
            )

    def skip_study(self, worker_id: str, study: str, why: str) -> None:
        """Record that the worker skips `study`, and why (shown in GET /workers)."""
        with self._engine.connect() as conn:
            found = conn.execute(
                sa.select(workers_table.c.skipped).where(workers_table.c.worker_id == worker_id)
            ).scalar()
        skipped = {**(json.loads(found) if found else {}), study: why}
        self.touch_worker(worker_id, skipped=json.dumps(skipped, sort_keys=True))

    def list_workers(self, seen_within: float) -> list[dict[str, Any]]:
        since = utcnow() - dt.timedelta(seconds=seen_within)
        query = (
            sa.select(workers_table)
            .where(workers_table.c.last_seen >= since)
            .order_by(workers_table.c.worker_id)
        )
        with self._engine.connect() as conn:
            rows = [dict(row._mapping) for row in conn.execute(query)]
        for row in rows:
            row["labels"] = json.loads(row["labels"]) if row["labels"] else {}
            row["skipped_studies"] = json.loads(row["skipped"]) if row["skipped"] else {}
        return rows


def _worker_row(
    dialect: str, worker_id: str, *, labels: dict[str, str] | None = None, **fields: Any
) -> tuple[sa.Insert, dict[str, Any]]:
    """The upsert of a worker's row (`Backend.touch_worker`) and its parameters."""
    values = {"worker_id": worker_id, "last_seen": utcnow(), **fields}
    if labels is not None:
        values["labels"] = json.dumps(labels, sort_keys=True)
    update = tuple(sorted(k for k in values if k != "worker_id"))
    return upsert(dialect, workers_table, ("worker_id",), update), values


def tune_sqlite(engine: sa.Engine) -> None:
    """WAL (readers do not wait for the writer) with synchronous=NORMAL on every connection:
    a commit no longer waits for an fsync (2.4 ms each here, and a claim commits four times),
    the WAL is synced at each checkpoint instead. The database stays consistent through any
    crash; a power loss or OS crash may lose the last commits, which the lease sweep then
    treats as a lost worker (SQLite's advice for WAL; Rails' default)."""
    with engine.begin() as conn:
        conn.execute(sa.text("PRAGMA journal_mode=WAL"))  # kept in the file
    sa.event.listen(engine, "connect", _synchronous_normal)
    engine.dispose()  # connections opened before the listener get it when reopened


def _synchronous_normal(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


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
            tune_sqlite(rdb.engine)
        _metadata.create_all(rdb.engine)
        _add_missing_columns(rdb.engine)
        study_table.create(rdb.engine)
        paused_table.create(rdb.engine)
    storage = optuna.storages.get_storage(rdb)
    return Backend(storage, rdb, open_artifact_store(settings), ClaimLock(rdb.engine, sqlite_path))

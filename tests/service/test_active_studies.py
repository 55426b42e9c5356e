"""Costs flat as history grows: what a claim, a listing and the lease sweep read, and a
database from before hpsearch kept its own study table (its studies are found at start-up)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service.app import create_app
from service.registry import StudyHandle
from service.scheduling import Candidate, order
from service.settings import Settings
from service.spec import Scheduling, StudySpec
from tests.scripted import API, ScriptedWorker, create_study
from tests.servers import digits_spec
from tests.service.conftest import StorageMaker


@pytest.fixture
def storage(new_storage: StorageMaker) -> str:
    return new_storage()


def app_over(storage: str, tmp_path: Path) -> TestClient:
    """The app; its own lease keeper sweeps every half hour, so the test's sweeps are the
    only ones."""
    return TestClient(
        create_app(Settings(storage=storage, data_dir=tmp_path / "data", heartbeat_interval=3600))
    )


@pytest.fixture
def http(storage: str, tmp_path: Path) -> Iterator[TestClient]:
    with app_over(storage, tmp_path) as client:
        yield client


def test_the_sweep_visits_studies_with_running_trials_and_once_after(http: TestClient) -> None:
    for name in ("idle", "busy"):
        create_study(http, name, n_trials=5)
    services = http.app.state.services  # type: ignore[attr-defined]
    visited: list[str] = []

    def sweep() -> list[str]:
        visited.clear()
        services.leases.sweep(True, lambda handle: visited.append(handle.name))
        return list(visited)

    assert sweep() == []
    worker = ScriptedWorker(http, "w", "busy")
    trial = worker.claim()
    assert trial is not None
    assert sweep() == ["busy"]
    assert worker.complete(trial.trial_id, 1.0).status_code == 200
    assert sweep() == ["busy"]  # once more after its last trial ended: a last collection
    assert sweep() == []


def test_done_studies_leave_the_active_set(http: TestClient) -> None:
    create_study(http, "short", n_trials=1, baseline=False)
    create_study(http, "long", n_trials=5, baseline=False)
    backend = http.app.state.services.backend  # type: ignore[attr-defined]
    worker = ScriptedWorker(http, "w")
    trial = worker.claim()
    assert trial is not None and trial.body["study"] == "short"
    assert [a.row.name for a in backend.active_studies()] == ["short", "long"]
    assert [a.running for a in backend.active_studies()] == [1, 0]
    assert worker.complete(trial.trial_id, 1.0).status_code == 200
    assert worker.claim().body["study"] == "long"  # type: ignore[union-attr]
    # The claim that found short's budget spent marked it done: claims no longer read it.
    assert [a.row.name for a in backend.active_studies()] == ["long"]
    http.post(f"{API}/studies/long/stop")
    assert backend.active_studies() == []


def test_studies_of_a_database_from_before_are_found_at_start(storage: str, tmp_path: Path) -> None:
    # What an earlier release left: its studies (the spec in the user attrs) and a workers
    # table without labels; no hpsearch_studies table.
    engine = sa.create_engine(storage)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE hpsearch_workers (worker_id VARCHAR(128) PRIMARY KEY,"
                " host VARCHAR(255), device VARCHAR(64), study VARCHAR(128),"
                " trial_number INTEGER, trial_id INTEGER,"
                " last_seen TIMESTAMP NOT NULL)"
            )
        )
    engine.dispose()
    raw = optuna.storages.RDBStorage(storage)
    spec = StudySpec.model_validate(digits_spec("old", n_trials=3, baseline=False))
    study = optuna.create_study(storage=raw, study_name="old")
    study.set_user_attr("spec", spec.model_dump(mode="json"))
    with app_over(storage, tmp_path) as http:  # the space is read from the file when absent
        space = http.app.state.services.registry.resolve_space(spec)  # type: ignore[attr-defined]
    study.set_user_attr("search_space", space.model_dump(mode="json"))
    raw.engine.dispose()
    with sa.create_engine(storage).begin() as conn:
        conn.execute(sa.text("DROP TABLE hpsearch_studies"))

    with app_over(storage, tmp_path) as http:
        assert [s["name"] for s in http.get(f"{API}/studies").json()] == ["old"]
        trial = ScriptedWorker(http, "w").claim(labels={"gpu": "h100"})
        assert trial is not None and trial.body["study"] == "old"
        [worker] = http.get(f"{API}/workers").json()
        assert worker["labels"] == {"gpu": "h100"}


def _candidate(key: str, running: int, age: int, **scheduling: object) -> Candidate:
    return Candidate(key, Scheduling.model_validate(scheduling), running, age)


def test_order_priority_then_share_then_age() -> None:
    candidates = [
        _candidate("old-heavy", 3, 0, weight=3),
        _candidate("new-light", 1, 1),
        _candidate("urgent-full", 2, 2, priority=1, max_concurrent_trials=2),
        _candidate("urgent", 5, 3, priority=1),
        _candidate("gpu", 0, 4, requires={"gpu": "h100"}),
    ]
    assert order(candidates, {}) == ["urgent", "old-heavy", "new-light"]
    assert order(candidates, {"gpu": "h100"}) == ["urgent", "gpu", "old-heavy", "new-light"]
    assert order(candidates, {"gpu": "a100"}) == ["urgent", "old-heavy", "new-light"]


def test_handles_follow_the_spec_version(http: TestClient) -> None:
    create_study(http, "versioned", n_trials=5)
    registry = http.app.state.services.registry  # type: ignore[attr-defined]
    before: StudyHandle = registry.get("versioned")
    assert http.patch(f"{API}/studies/versioned", json={"n_trials": 7}).status_code == 200
    after: StudyHandle = registry.get("versioned")
    assert (before.version, before.spec.n_trials) == (0, 5)
    assert (after.version, after.spec.n_trials) == (1, 7)
    assert after.study is before.study  # the same Study and sampler: nothing else changed

"""The database goes away: the API answers 503 with Retry-After (and no connection details),
then recovers by itself when the database is back, and the running trial keeps its lease.

PostgreSQL is made unreachable for real: the database stops accepting connections
(ALLOW_CONNECTIONS false) and the server's open connections are terminated."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import httpx
import optuna
import psycopg
import pytest
from optuna.trial import TrialState

from tests.postgres import PG_BASE, admin_url
from tests.scripted import API, ScriptedWorker, create_study, unique
from tests.servers import Server
from tests.service.conftest import ServerStarter, StorageMaker

DB_PASSWORD = "outage-pass-71c0e2"
GRACE = 3


@pytest.fixture
def pg_server(backend: str, new_storage: StorageMaker, start_server: ServerStarter) -> Server:
    if backend != "postgresql":
        pytest.skip("a PostgreSQL database is taken away; SQLite is a file")
    url = new_storage().replace("://postgres@", f"://postgres:{DB_PASSWORD}@")
    return start_server(url, process=True, heartbeat_interval=1, lease_grace=GRACE)


@contextlib.contextmanager
def database_down(url: str) -> Iterator[None]:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url(PG_BASE), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            yield
        finally:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def test_503_while_the_database_is_down_then_recovery(pg_server: Server) -> None:
    name = unique("outage")
    with httpx.Client(base_url=pg_server.url, timeout=60) as http:
        create_study(http, name, n_trials=2)
        worker = ScriptedWorker(http, "w-outage", name)
        trial = worker.claim()
        assert trial is not None
        assert worker.report(trial.trial_id, 0, 1.0).status_code == 200

        with database_down(pg_server.storage):
            down_since = time.monotonic()
            for response in (
                http.get(f"{API}/studies"),
                http.get(f"{API}/studies/{name}"),
                http.post(f"{API}/trials/claim", json={"worker_id": "w2", "study": name}),
                worker.report(trial.trial_id, 1, 0.9),
                worker.heartbeat(trial.trial_id),
                worker.complete(trial.trial_id, 0.9),
                http.get("/healthz"),
            ):
                assert response.status_code == 503, (response.request.url, response.text)
                assert int(response.headers["retry-after"]) > 0
                assert "database is unavailable" in response.json()["detail"]
                assert DB_PASSWORD not in response.text and "postgres" not in response.text
            # Longer than the lease grace: no worker could renew its lease meanwhile.
            time.sleep(max(0.0, GRACE + 1 - (time.monotonic() - down_since)))

        # Back without a restart. The worker backs off a second before it retries (the lease
        # sweep runs twice a second meanwhile); its heartbeat gets through, the lease holds.
        time.sleep(1.0)
        deadline = time.monotonic() + 30
        while (r := worker.heartbeat(trial.trial_id)).status_code == 503:
            assert time.monotonic() < deadline, "no recovery within 30 s"
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        end = time.monotonic() + GRACE + 1  # past the grace the server gives after the outage
        while time.monotonic() < end:
            assert worker.heartbeat(trial.trial_id).status_code == 200
            time.sleep(0.5)
        assert worker.report(trial.trial_id, 1, 0.9).status_code == 200
        assert worker.complete(trial.trial_id, 0.9).status_code == 200
        assert http.get("/healthz").status_code == 200
        assert http.get(f"{API}/studies/{name}").json()["counts"]["complete"] == 1

    [stored, *_] = optuna.load_study(study_name=name, storage=pg_server.storage).trials
    assert stored.state == TrialState.COMPLETE and stored.intermediate_values == {0: 1.0, 1: 0.9}
    log = pg_server.log_path.read_text(errors="replace")
    assert "database unavailable" in log
    assert DB_PASSWORD not in log

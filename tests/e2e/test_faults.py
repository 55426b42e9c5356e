"""Workers die, servers restart: nothing is lost and budgets stay exact (real processes)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from tests.servers import digits_spec
from tests.workers import start_worker

# Real training on one backend: the backend-specific parts (restarts, requeues, checkpoints)
# are covered on SQLite and PostgreSQL by tests/service/test_restart.py, test_leases.py and
# test_artifacts.py with scripted workers.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True),
]

FAST_LEASES = {"heartbeat_interval": 1, "lease_grace": 3}


def small_spec(name: str, **overrides: object) -> dict:
    return digits_spec(
        name,
        data={"kind": "digits", "classes": [0, 1, 2], "image_size": 16, "batch_size": 32},
        training={"epochs": 4, "seed": 3, "checkpoint_every": 1},
        pruner={"name": "none"},
        **overrides,
    )


def wait_until(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def trials_of(server, name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=server.storage).get_trials()


def checkpointed(server, name: str) -> FrozenTrial | None:
    for t in trials_of(server, name):
        if t.state == TrialState.RUNNING and "hpsearch:checkpoint" in t.system_attrs:
            return t
    return None


def finished(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def run_reference(server, api, tmp_path, name: str) -> FrozenTrial:
    """The same baseline trial, uninterrupted."""
    assert api.post("/api/v1/studies", json=small_spec(name, n_trials=1)).status_code == 201
    worker = start_worker(server.url, tmp_path / f"{name}.log", "--exit-when-idle", "--study", name)
    assert worker.wait(timeout=300) == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
    return trials_of(server, name)[0]


def test_killed_worker_trial_resumes_from_checkpoint(storage_url, server_factory, tmp_path):
    server = server_factory(storage_url, **FAST_LEASES)
    import httpx

    api = httpx.Client(base_url=server.url, timeout=60)
    reference = run_reference(server, api, tmp_path, "reference")

    assert api.post("/api/v1/studies", json=small_spec("killed", n_trials=2)).status_code == 201
    victim = start_worker(server.url, tmp_path / "victim.log", "--study", "killed")
    first = wait_until(lambda: checkpointed(server, "killed"), 240, "a checkpoint")
    os.kill(victim.pid, signal.SIGKILL)  # in the middle of the next epoch
    victim.wait(timeout=30)

    # The server notices the silence within the grace period and re-queues the trial.
    wait_until(
        lambda: any(t.state == TrialState.WAITING for t in trials_of(server, "killed")),
        30,
        "the stale trial to be re-queued",
    )
    rescuer = start_worker(
        server.url, tmp_path / "rescuer.log", "--exit-when-idle", "--study", "killed"
    )
    assert rescuer.wait(timeout=300) == 0, (tmp_path / "rescuer.log").read_text()[-2000:]

    trials = trials_of(server, "killed")
    assert len(finished(trials)) == 2, [t.state for t in trials]
    dead = next(t for t in trials if t.number == first.number)
    assert dead.state == TrialState.FAIL
    retry = next(t for t in trials if t.system_attrs.get("retry_history") == [first.number])
    assert retry.state == TrialState.COMPLETE
    resumed_after = first.system_attrs["hpsearch:checkpoint"]["epoch"]
    rows = {row["number"]: row for row in api.get("/api/v1/studies/killed/trials").json()}
    assert rows[retry.number]["retry_of"] == first.number
    assert rows[retry.number]["resumed_from_epoch"] >= resumed_after + 1
    assert sorted(retry.intermediate_values) == [0, 1, 2, 3]
    # Same seed, same CPU: the resumed run ends exactly where an uninterrupted one does.
    assert retry.params == reference.params
    for epoch, value in reference.intermediate_values.items():
        assert retry.intermediate_values[epoch] == pytest.approx(value, rel=1e-5)
    assert retry.value == pytest.approx(reference.value, rel=1e-5)


def test_sigterm_hands_the_trial_back(storage_url, server_factory, tmp_path):
    server = server_factory(storage_url)  # default 10 s heartbeats: the hand-back must not wait
    import httpx

    api = httpx.Client(base_url=server.url, timeout=60)
    assert api.post("/api/v1/studies", json=small_spec("handback", n_trials=1)).status_code == 201
    first = start_worker(server.url, tmp_path / "first.log", "--study", "handback")
    trial = wait_until(lambda: checkpointed(server, "handback"), 240, "a checkpoint")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 0, (tmp_path / "first.log").read_text()[-2000:]
    trials = trials_of(server, "handback")
    assert trials[0].state == TrialState.FAIL
    assert "handed back" in trials[0].user_attrs["fail_reason"]
    assert [t.state for t in trials[1:]] == [TrialState.WAITING], "re-queued at once"

    second = start_worker(
        server.url, tmp_path / "second.log", "--exit-when-idle", "--study", "handback"
    )
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-2000:]
    trials = trials_of(server, "handback")
    assert [t.state for t in finished(trials)] == [TrialState.COMPLETE]
    done = finished(trials)[0]
    assert done.user_attrs["worker"] != trial.user_attrs["worker"]
    assert sorted(done.intermediate_values) == [0, 1, 2, 3]


def test_server_restart_mid_study_loses_nothing(storage_url, server_factory, tmp_path):
    server = server_factory(storage_url, process=True)
    import httpx

    api = httpx.Client(base_url=server.url, timeout=60)
    spec = small_spec("restart", n_trials=4)
    assert api.post("/api/v1/studies", json=spec).status_code == 201
    workers = [
        start_worker(server.url, tmp_path / f"w{i}.log", "--exit-when-idle", "--study", "restart")
        for i in range(2)
    ]
    wait_until(
        lambda: any(t.intermediate_values for t in trials_of(server, "restart")),
        240,
        "a first report",
    )
    server.kill()  # kill -9: no graceful shutdown
    time.sleep(3)
    server.start()
    for i, worker in enumerate(workers):
        assert worker.wait(timeout=400) == 0, (tmp_path / f"w{i}.log").read_text()[-2000:]
    trials = trials_of(server, "restart")
    assert len(finished(trials)) == 4
    assert not [t for t in trials if t.state == TrialState.FAIL], "no trial lost its lease"
    for t in finished(trials):
        assert sorted(t.intermediate_values) == [0, 1, 2, 3]
    assert api.get("/api/v1/studies/restart").json()["state"] == "done"

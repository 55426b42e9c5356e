"""A real worker serving every study lives through the deletion of the study whose trial it is
training: it drops that trial and finishes the other study."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from tests.servers import digits_spec
from tests.workers import start_worker

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True),
]


def _spec(name: str, epochs: int, n_trials: int) -> dict:
    return digits_spec(
        name,
        data={"kind": "digits", "classes": [0, 1, 2], "image_size": 16, "batch_size": 64},
        training={"epochs": epochs, "seed": 0, "checkpoint_every": 1},
        pruner={"name": "none"},
        n_trials=n_trials,
    )


def _reported(server, name: str) -> bool:
    """Whether a running trial of the study has reported an epoch (so it is mid-training)."""
    trials = optuna.load_study(study_name=name, storage=server.storage).get_trials()
    return any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials)


def test_worker_lives_through_the_deletion_of_its_trial_study(server, api, tmp_path):
    # The long study is older: a claim without `study` goes to it first.
    assert api.post("/api/v1/studies", json=_spec("long", epochs=50, n_trials=1)).status_code == 201
    assert api.post("/api/v1/studies", json=_spec("short", epochs=2, n_trials=2)).status_code == 201
    log = tmp_path / "worker.log"
    worker = start_worker(server.url, log, "--exit-when-idle")
    try:
        deadline = time.monotonic() + 300
        while not _reported(server, "long"):
            assert worker.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the worker never trained a trial of 'long'"
            time.sleep(0.2)
        assert api.delete("/api/v1/studies/long").status_code == 204
        code = worker.wait(timeout=300)
    finally:
        if worker.poll() is None:
            worker.kill()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    gone = [line for line in text.splitlines() if "no longer has it" in line]
    assert len(gone) == 1 and "trial 0 of long" in gone[0], text[-3000:]

    short = api.get("/api/v1/studies/short").json()
    assert short["state"] == "done" and short["counts"]["complete"] == 2, short
    assert api.get("/api/v1/studies/long").status_code == 404

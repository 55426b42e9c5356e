"""End to end: a real server and real `hpsearch worker` subprocesses fine-tune on digits."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from tests.servers import digits_spec
from tests.workers import start_worker

# Real training on one backend: the protocol on PostgreSQL is covered by tests/service/.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True),
]


def test_two_workers_finish_a_digits_study(server, api, tmp_path):
    spec = digits_spec(
        "e2e",
        data={"kind": "digits", "classes": [5, 6, 7, 8, 9], "image_size": 16, "batch_size": 64},
        training={"epochs": 3, "seed": 0},
        # Prune anything worse than the median from the first epoch on, after two trials.
        pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        n_trials=5,
    )
    assert api.post("/api/v1/studies", json=spec).status_code == 201
    workers = [
        start_worker(server.url, tmp_path / f"worker{i}.log", "--exit-when-idle", "--study", "e2e")
        for i in range(2)
    ]
    for i, worker in enumerate(workers):
        assert worker.wait(timeout=600) == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]

    study = optuna.load_study(study_name="e2e", storage=server.storage)
    trials = study.get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 5 and all(t.state != TrialState.RUNNING for t in trials)
    for trial in trials:
        steps = sorted(trial.intermediate_values)
        assert steps == list(range(len(steps))), "epochs are reported in order, from 0"
        if trial.state == TrialState.COMPLETE:
            assert steps == [0, 1, 2]
            assert trial.value == pytest.approx(trial.intermediate_values[2])
            assert 0 <= trial.user_attrs["val_accuracy"] <= 1
        if trial.state == TrialState.PRUNED:
            # It stopped at the epoch it was pruned: nothing reported after it.
            assert len(steps) < 3
    assert trials[0].user_attrs.get("baseline") is True
    assert trials[0].params["lr"] == 0.01

    best = api.get("/api/v1/studies/e2e/best", params={"k": 3}).json()
    assert best["trials"], best
    losses = [t["val_loss"] for t in best["trials"]]
    assert losses == sorted(losses)
    assert best["trials"][0]["config"]["hparams"]["lr"] > 0
    assert best["baseline"]["number"] == 0
    summary = api.get("/api/v1/studies/e2e").json()
    assert summary["state"] == "done"
    workers_seen = {t.user_attrs["worker"] for t in trials}
    assert len(workers_seen) == 2, "both worker processes ran trials"

"""End to end: real `hpsearch worker` subprocesses on a study with the asha pruner in promotion
mode. Trials pause at rungs (their workers take other trials), paused trials are promoted and
resumed from their checkpoints on whichever worker claims, and the study ends with exactly its
budget of configurations, each one learning curve."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from service.keys import CHECKPOINT, PAUSED_AFTER_EPOCH, PROMOTIONS
from tests.servers import digits_spec
from tests.workers import start_worker

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True),
]
EPOCHS = 4  # rungs after epochs 1 and 3


def test_workers_pause_and_promote_trials(server, api, tmp_path):
    spec = digits_spec(
        "asha-e2e",
        data={"kind": "digits", "classes": [5, 6, 7, 8, 9], "image_size": 16, "batch_size": 64},
        model={"arch": "shufflenet_v2_x0_5", "weights": None, "freeze_backbone": True},
        training={"epochs": EPOCHS, "seed": 0, "checkpoint_every": 0},
        pruner={"name": "asha", "reduction_factor": 3, "min_resource": 1, "mode": "promotion"},
        sampler={"name": "random", "seed": 3},
        n_trials=6,
    )
    assert api.post("/api/v1/studies", json=spec).status_code == 201
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [
        start_worker(server.url, log, "--exit-when-idle", "--study", "asha-e2e") for log in logs
    ]
    for worker, log in zip(workers, logs, strict=True):
        assert worker.wait(timeout=600) == 0, log.read_text()[-3000:]

    trials = optuna.load_study(study_name="asha-e2e", storage=server.storage).get_trials()
    assert len(trials) == 6, "n_trials counts configurations: a promotion is no new trial"
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    promoted = [t for t in trials if t.user_attrs.get(PROMOTIONS)]
    assert promoted, "some paused trial was promoted"
    assert any(t.state == TrialState.COMPLETE for t in promoted), (
        "the best candidates train to the end once nothing else can run"
    )
    for trial in trials:
        steps = sorted(trial.intermediate_values)
        assert steps == list(range(len(steps))), "one curve, every epoch once, from 0"
        if trial.state == TrialState.COMPLETE:
            assert len(steps) == EPOCHS
        else:  # it ended paused at a rung, when nothing could promote it any more
            assert trial.user_attrs[PAUSED_AFTER_EPOCH] in (0, 2)
            assert len(steps) - 1 == trial.user_attrs[PAUSED_AFTER_EPOCH]
            assert trial.value == trial.intermediate_values[steps[-1]]
    text = "".join(log.read_text() for log in logs)
    assert "paused after epoch" in text and "resuming after epoch" in text
    summary = api.get("/api/v1/studies/asha-e2e").json()
    assert summary["state"] == "done" and summary["counts"]["paused"] == 0
    listed = api.get("/api/v1/studies/asha-e2e/trials").json()
    assert sum(t["promotions"] for t in listed) == sum(t.user_attrs[PROMOTIONS] for t in promoted)
    # Every checkpoint is collected once its trial has ended (the last ones by the sweep).
    assert all(CHECKPOINT in t.system_attrs for t in trials if t.state == TrialState.PRUNED)

"""Test-split metrics: a worker completes a trial with test_loss/test_accuracy of the kept
weights; `best` shows them, the trial list does not, and they never rank a trial. Scripted
workers against a real server, on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
import pytest

from tests.scripted import API, ScriptedWorker, create_study, trials, unique
from tests.servers import Server

RANDOM = {"name": "random", "seed": 0}


def _complete(worker: ScriptedWorker, val_loss: float, **body: float) -> int:
    trial = worker.next_trial()
    assert worker.report(trial.trial_id, 0, val_loss).status_code == 200
    r = worker.complete(trial.trial_id, val_loss, val_accuracy=0.5, **body)
    assert r.status_code == 200, r.text
    return trial.number


def test_best_shows_test_metrics_and_ranking_ignores_them(
    client: httpx.Client, shared_server: Server
) -> None:
    name = unique("testsplit")
    create_study(client, name, sampler=RANDOM, n_trials=3, pruner={"name": "none"})
    worker = ScriptedWorker(client, "test-w", name)
    first = _complete(worker, 0.4, test_loss=0.9, test_accuracy=0.25)
    # a far better test loss, but a worse validation loss: it must rank lower
    second = _complete(worker, 0.6, test_loss=0.1, test_accuracy=1.0)
    third = _complete(worker, 0.5)  # a data set without a test folder sends none

    best = client.get(f"{API}/studies/{name}/best", params={"k": 3}).json()["trials"]
    assert [t["number"] for t in best] == [first, third, second]
    shown = {t["number"]: (t["test_loss"], t["test_accuracy"]) for t in best}
    assert shown == {first: (0.9, 0.25), second: (0.1, 1.0), third: (None, None)}
    assert all(
        "test_loss" not in t and "test_accuracy" not in t for t in trials(client, name)
    )  # nobody selects on the test set
    study = client.get(f"{API}/studies/{name}").json()
    assert study["best"]["number"] == first


@pytest.mark.parametrize(
    "bad",
    [
        {"test_loss": "nan"},
        {"test_loss": "inf"},
        {"test_accuracy": 1.5},
        {"test_accuracy": -0.1},
        {"test_loss": "x"},
    ],
)
def test_bad_test_metrics_are_refused_and_change_nothing(
    client: httpx.Client, bad: dict, shared_server: Server
) -> None:
    name = unique("testsplit-bad")
    create_study(client, name, sampler=RANDOM, n_trials=1, pruner={"name": "none"})
    worker = ScriptedWorker(client, "test-bad-w", name)
    trial = worker.next_trial()
    r = worker.complete(trial.trial_id, 0.5, **bad)
    assert r.status_code == 422, r.text
    assert any(field in r.text for field in bad)
    assert trials(client, name)[0]["state"] == "running"
    assert worker.complete(trial.trial_id, 0.5).status_code == 200

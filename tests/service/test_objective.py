"""The objective users choose: the metric sets the study's direction, what the pruner reads and
how trials rank; with ``epoch: best`` a trial's value is its best epoch's. Scripted workers
against a real server, on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
import optuna
import pytest

from tests.scripted import API, ScriptedWorker, create_study, summary, trials, unique
from tests.servers import Server

ACCURACY = {"metric": "val_accuracy", "epoch": "last"}
RANDOM = {"name": "random", "seed": 0}


def _run(
    worker: ScriptedWorker, curve: list[tuple[float, float]], complete: dict | None = None
) -> tuple[int, str]:
    """Claim a trial, report (val_loss, val_accuracy) per epoch, complete with the last (or
    ``complete``) unless pruned. Returns (number, end state)."""
    trial = worker.claim()
    assert trial is not None
    for epoch, (loss, accuracy) in enumerate(curve):
        r = worker.report(trial.trial_id, epoch, loss, val_accuracy=accuracy)
        assert r.status_code == 200, r.text
        if r.json()["prune"]:
            return trial.number, "pruned"
    loss, accuracy = curve[-1]
    body = complete or {"val_loss": loss, "val_accuracy": accuracy}
    r = worker.http.post(f"{API}/trials/{trial.trial_id}/complete", json=body)
    assert r.status_code == 200, r.text
    return trial.number, "complete"


def test_val_accuracy_is_maximised_and_ranks_the_best(
    client: httpx.Client, shared_server: Server
) -> None:
    name = unique("accuracy")
    create_study(
        client, name, objective=ACCURACY, sampler=RANDOM, n_trials=3, pruner={"name": "none"}
    )
    study = optuna.load_study(study_name=name, storage=shared_server.storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    worker = ScriptedWorker(client, "acc-w", name)
    # the baseline; then a trial with a higher loss but a higher accuracy; then a worse one
    _run(worker, [(0.9, 0.6), (0.5, 0.7)])
    _run(worker, [(0.9, 0.7), (0.8, 0.9)])
    _run(worker, [(0.4, 0.5), (0.3, 0.6)])

    best = client.get(f"{API}/studies/{name}/best", params={"k": 3}).json()
    assert [t["number"] for t in best["trials"]] == [1, 0, 2]  # by accuracy, not by loss
    top = best["trials"][0]
    assert (top["value"], top["val_accuracy"], top["val_loss"]) == (0.9, 0.9, 0.8)
    assert top["value_epoch"] == 1
    assert best["baseline"]["val_loss"] == 0.5 and best["baseline"]["val_accuracy"] == 0.7
    assert top["improvement_over_baseline_pct"] == pytest.approx(100 * (0.9 - 0.7) / 0.7, 1e-3)
    shown = summary(client, name)
    assert shown["best"]["number"] == 1 and shown["improvement_over_baseline_pct"] > 0
    assert shown["spec"]["objective"] == ACCURACY
    # the curve is the metric's, and the loss is still shown
    by_number = {t["number"]: t for t in trials(client, name)}
    assert by_number[1]["intermediate_values"] == {"0": 0.7, "1": 0.9}
    assert (by_number[1]["val_loss"], by_number[1]["value"]) == (0.8, 0.9)


def test_the_default_objective_is_val_loss_and_its_values_unchanged(
    client: httpx.Client, shared_server: Server
) -> None:
    name = unique("loss")
    created = create_study(client, name, sampler=RANDOM, n_trials=2, pruner={"name": "none"})
    assert created["spec"]["objective"] == {"metric": "val_loss", "epoch": "last"}
    study = optuna.load_study(study_name=name, storage=shared_server.storage)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    worker = ScriptedWorker(client, "loss-w", name)
    _run(worker, [(0.9, 0.6), (0.5, 0.7)])
    _run(worker, [(0.9, 0.7), (0.8, 0.9)])
    best = client.get(f"{API}/studies/{name}/best", params={"k": 2}).json()
    assert [t["number"] for t in best["trials"]] == [0, 1]
    assert best["trials"][0]["val_loss"] == best["trials"][0]["value"] == 0.5
    assert trials(client, name)[0]["intermediate_values"] == {"0": 0.9, "1": 0.5}


@pytest.mark.parametrize(("metric", "low_pruned"), [("val_accuracy", True), ("val_loss", False)])
def test_the_pruner_follows_the_metric_direction(
    client: httpx.Client, metric: str, low_pruned: bool
) -> None:
    """Two trials complete with epoch-0 values 0.6 and 0.8; a third reporting 0.1 at epoch 0 is
    below the median: pruned when accuracy is maximised, kept when loss is minimised."""
    name = unique("prune-dir")
    create_study(client, name, objective={"metric": metric}, sampler=RANDOM, n_trials=6,
                 baseline=False, pruner={"name": "median", "n_startup_trials": 2,
                                         "n_warmup_steps": 0})  # fmt: skip
    worker = ScriptedWorker(client, "prune-w", name)
    for value in (0.6, 0.8):
        _run(worker, [(value, value)] * 3)
    trial = worker.claim()
    assert trial is not None
    r = worker.report(trial.trial_id, 0, 0.1, val_accuracy=0.1)
    assert r.status_code == 200, r.text
    assert r.json()["prune"] is low_pruned
    if not low_pruned:  # a high value is the bad one for the loss
        trial = worker.claim()
        assert trial is not None
        r = worker.report(trial.trial_id, 0, 0.95, val_accuracy=0.95)
        assert r.json()["prune"] is True


def test_an_accuracy_study_needs_the_accuracy(client: httpx.Client) -> None:
    name = unique("acc-missing")
    create_study(client, name, objective=ACCURACY, n_trials=1)
    worker = ScriptedWorker(client, "acc-missing-w", name)
    trial = worker.claim()
    assert trial is not None
    for r in (worker.report(trial.trial_id, 0, 0.5), worker.complete(trial.trial_id, 0.5)):
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "val_accuracy"
    assert trials(client, name)[0]["state"] == "running"  # nothing changed


def test_epoch_best_takes_the_best_epochs_values(client: httpx.Client) -> None:
    name = unique("best-epoch")
    create_study(client, name, objective={"metric": "val_loss", "epoch": "best"}, n_trials=1)
    worker = ScriptedWorker(client, "best-w", name)
    curve = [(0.5, 0.6), (0.3, 0.8), (0.4, 0.7)]
    # an epoch never reported is refused (and changes nothing)
    trial = worker.claim()
    assert trial is not None
    for epoch, (loss, accuracy) in enumerate(curve):
        assert worker.report(trial.trial_id, epoch, loss, val_accuracy=accuracy).status_code == 200
    r = worker.complete(trial.trial_id, 0.3, val_accuracy=0.8, epoch=7)
    assert r.status_code == 422 and r.json()["field"] == "epoch", r.text
    r = worker.complete(trial.trial_id, 0.3, val_accuracy=0.8, epoch=1)
    assert r.status_code == 200, r.text
    (shown,) = trials(client, name)
    assert (shown["state"], shown["value"], shown["value_epoch"]) == ("complete", 0.3, 1)
    assert (shown["val_loss"], shown["val_accuracy"]) == (0.3, 0.8)
    assert shown["intermediate_values"] == {"0": 0.5, "1": 0.3, "2": 0.4}
    best = client.get(f"{API}/studies/{name}/best").json()["trials"][0]
    assert (best["val_loss"], best["val_accuracy"], best["value_epoch"]) == (0.3, 0.8, 1)


def test_warm_start_history_needs_the_same_metric(client: httpx.Client) -> None:
    source = unique("ws-loss")
    create_study(client, source, n_trials=1)
    r = client.post(
        f"{API}/studies",
        json={
            "name": unique("ws-acc"),
            "data": {"kind": "digits", "image_size": 16},
            "training": {"epochs": 3},
            "objective": ACCURACY,
            "warm_start": {"study": source},
        },
    )
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "warm_start.history"
    r = client.post(
        f"{API}/studies",
        json={
            "name": unique("ws-acc"),
            "data": {"kind": "digits", "image_size": 16},
            "training": {"epochs": 3},
            "objective": ACCURACY,
            "warm_start": {"study": source, "history": False},
        },
    )
    assert r.status_code == 201, r.text
